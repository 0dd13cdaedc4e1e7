// Package testaddr hands tests loopback addresses to configure before
// anything listens on them.
//
// A port the kernel picked for a listener on :0 and then freed comes from
// the ephemeral range, which every outgoing connection on the machine also
// draws from: in a `go test ./...` run, another package's connection can
// take it before the test binds it ("address already in use"). The ports
// here come from below that range instead.
package testaddr

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
)

// Below Linux's default ephemeral range (32768–60999), above the ports
// services usually take.
const lo, hi = 20000, 32768

// Port returns a loopback TCP port that could be bound just now.
func Port(tb testing.TB) int {
	tb.Helper()
	for range 200 {
		p := lo + rand.IntN(hi-lo)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // taken: try another
		}
		ln.Close()
		return p
	}
	tb.Fatalf("no free loopback port in %d-%d", lo, hi-1)
	return 0
}

// Addr returns "127.0.0.1:PORT" for a Port.
func Addr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Port(tb))
}
