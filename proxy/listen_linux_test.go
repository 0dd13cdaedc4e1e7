package proxy

import (
	"net"
	"testing"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
)

// testListener serves the tests as sluice serves its users: on Linux the
// server package hands the proxy rawtcp listeners.
func testListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	l, err := rawtcp.Listen(ln.(*net.TCPListener))
	if err != nil {
		tb.Fatal(err)
	}
	return l
}
