// Package sockio makes the raw socket calls that sluice's hot paths share:
// one recvfrom or sendto on a non-blocking socket, retried on EINTR.
//
// They are raw syscalls (syscall.RawSyscall6): a call on a non-blocking
// socket cannot block, so the Go scheduler need not be told about it. That
// spares entersyscall and exitsyscall on each call and leaves Go's sysmon
// thread asleep while the process is busy. recvfrom and sendto rather than
// read and write: a socket call skips the file layer's position lock
// (fdget_pos) and iterator set-up, as nginx's recv and send do.
package sockio

import (
	"syscall"
	"unsafe"
)

// Recv reads once from fd into b, which must not be empty. It returns
// EAGAIN when fd has nothing to read, and n == 0 with errno 0 at the end
// of the stream.
func Recv(fd uintptr, b []byte) (n int, errno syscall.Errno) {
	return transfer(syscall.SYS_RECVFROM, fd, b, 0)
}

// Send writes once from b, which must not be empty, to fd. It returns
// EAGAIN when fd takes nothing now. MSG_NOSIGNAL: a peer that is gone
// gives EPIPE, not SIGPIPE.
func Send(fd uintptr, b []byte) (n int, errno syscall.Errno) {
	return transfer(syscall.SYS_SENDTO, fd, b, syscall.MSG_NOSIGNAL)
}

// transfer makes one recvfrom or sendto (trap) of b on fd with flags,
// retried on EINTR.
func transfer(trap, fd uintptr, b []byte, flags uintptr) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), flags, 0, 0)
		switch e {
		case 0:
			return int(r), 0
		case syscall.EINTR:
		default:
			return 0, e
		}
	}
}
