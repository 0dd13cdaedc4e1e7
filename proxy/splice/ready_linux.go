//go:build linux

package splice

import (
	"net"
	"syscall"
	"unsafe"
)

// rawConnOf returns the raw connection to wait on for readability, or nil
// when c is not a socket the session can probe (then reads block in Read).
func rawConnOf(c net.Conn) syscall.RawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// ready is the callback d passes to syscall.RawConn.Read to wait until its
// source socket is readable without reading (and so without a buffer).
//
// RawConn.Read calls it, and while it returns false waits for the poller to
// report the socket readable and calls it again. Before the first call the
// poller's readiness flag is reset, so a socket that became readable before
// the wait began would never be reported: ready must look for itself. It
// peeks one byte without consuming it. Data, end of stream (0 bytes) and
// errors all mean "go and read"; the Read that follows reports them.
func (d *dir) ready(fd uintptr) bool {
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(&d.peek[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return e != syscall.EAGAIN
		}
	}
}
