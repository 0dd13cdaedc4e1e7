//go:build unix

package splice

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// unixPair connects two ends with a socketpair: no ports, so fit for the
// fuzzer's thousands of sessions, and the same readiness path as TCP.
func unixPair(tb testing.TB) (a, b net.Conn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		tb.Fatal(err)
	}
	syscall.CloseOnExec(fds[0]) // net.FileConn's duplicates are close-on-exec too
	syscall.CloseOnExec(fds[1])
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}
