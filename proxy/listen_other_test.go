//go:build !linux

package proxy

import (
	"net"
	"testing"
)

// testListener serves the tests on net's own listener, as elsewhere.
func testListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}
