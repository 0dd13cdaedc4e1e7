package splice

import (
	"net"
	"testing"
)

// unixPair: Windows has no socketpair here, so the tests that ask for one
// get a loopback TCP pair.
func unixPair(tb testing.TB) (a, b net.Conn) { return tcpPair(tb) }
