//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// peekAlive looks at c's socket without blocking: alive means nothing to
// read yet. End of stream, an error, or bytes nobody asked for mean the
// connection cannot carry a request. (A read deadline in the past would
// not do: Go reports the timeout without asking the kernel.)
func peekAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n <= 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true // never wait
	})
	return err == nil && alive
}

// watchHangUp waits, without a buffer, for the client on c to hang up and
// then calls onGone. It returns at the first sign of life instead (bytes
// of a pipelined request: the client is still there), when the read
// deadline of c passes, or on an error. It is how a long-running exchange
// learns that nobody waits for its answer (net/http does this with a
// background read; nginx with its event loop).
func watchHangUp(c net.Conn, onGone func()) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	gone := false
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EAGAIN || err == syscall.EWOULDBLOCK {
			return false // wait for readiness
		}
		gone = n == 0 || err != nil
		return true
	})
	if gone {
		onGone()
	}
}
