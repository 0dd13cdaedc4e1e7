//go:build !linux

package proxy

import (
	"context"
	"net"
	"time"

	"github.com/sluice-proxy/sluice/proxy/splice"
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

// upstreamWait is the connection of an upgrade exchange, which waits as
// usual here (there is no splice poller).
type upstreamWait struct{ c net.Conn }

func waitInSplice(c net.Conn, _ bool) *upstreamWait { return &upstreamWait{c: c} }

func (w *upstreamWait) Read(p []byte) (int, error) { return w.c.Read(p) }

func (w *upstreamWait) stop() {}

func (w *upstreamWait) release() {}

func (w *upstreamWait) take() *splice.Registration { return nil }
