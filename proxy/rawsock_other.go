//go:build !linux

package proxy

import (
	"context"
	"net"
	"time"
)

// Elsewhere connections keep net's own Read and Write.
func newRawSock(c net.Conn) net.Conn { return c }

func underlying(c net.Conn) net.Conn { return c }

// dialTCP connects to host ("address:port") with net's dialer, within
// timeout (0: no limit of our own) or until ctx is done.
func dialTCP(ctx context.Context, host string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", host)
}
