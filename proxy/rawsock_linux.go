//go:build linux

package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
	"github.com/sluice-proxy/sluice/proxy/splice"
)

// upstreamKeepalive is the keepalive of upstream WebSocket connections,
// as net.Dialer's default: a backend host that vanishes is found, not
// waited for.
var upstreamKeepalive = rawtcp.Keepalive{Idle: 15, Interval: 15, Count: 9}

// dialTCP connects to host ("address:port") within timeout (0: no limit
// of our own) or until ctx is done. An IP address is dialled with rawtcp
// (every call raw, see that package); a name goes through net's resolver
// and dialer.
func dialTCP(ctx context.Context, host string, timeout time.Duration) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(host); err == nil && ap.Addr().Zone() == "" {
		c, err := rawtcp.Dial(ctx, ap, timeout, upstreamKeepalive)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return c, nil
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", host)
}

// newRawSock gives c raw reads and writes when it is one of net's TCP
// connections (see rawtcp.Wrap); underlying gives back what it wrapped,
// for those that must see net's own type (the splice, a hijacking handler).
func newRawSock(c net.Conn) net.Conn { return rawtcp.Wrap(c) }

func underlying(c net.Conn) net.Conn { return rawtcp.Unwrap(c) }

// upstreamWait is a WebSocket upstream connection whose wait for the
// answer to the upgrade runs in the splice's poller (splice.Register),
// whose session then takes the registration over: the socket never joins
// Go's netpoller (bench/README.md). Reads of the exchange go through it,
// so that the session learns whether the last one may have left bytes in
// the socket.
type upstreamWait struct {
	c   net.Conn
	rc  *rawtcp.Conn         // c, when it waits in the poller
	reg *splice.Registration // until released or taken
	// fresh: nothing has been read yet, and rc waits in the poller. The
	// socket was registered before the request went out, so the
	// registration reports whatever comes (the answer cannot be there
	// before the request), and the first read waits before it tries:
	// trying first would only find nothing.
	fresh bool
}

// waitInSplice prepares c, the connection of an upgrade exchange, to wait
// in the splice's poller when its session will run there (inline); c must
// not be in use. A connection that cannot (TLS, a name's dial through
// net) waits as usual.
func waitInSplice(c net.Conn, inline bool) *upstreamWait {
	w := &upstreamWait{c: c}
	if rc, ok := c.(*rawtcp.Conn); ok && inline {
		if w.reg = splice.Register(rc); w.reg != nil {
			w.rc = rc
			rc.SetReadWait(w.reg.Wait)
			w.fresh = true
		}
	}
	return w
}

func (w *upstreamWait) Read(p []byte) (int, error) {
	if w.fresh {
		w.fresh = false
		w.rc.AwaitRead() // a closed connection: the read says so
	}
	n, err := w.c.Read(p)
	if w.reg != nil {
		w.reg.SetUnread(n == len(p))
	}
	return n, err
}

// stop ends the waits in the poller: the exchange is over.
func (w *upstreamWait) stop() {
	if w.rc != nil {
		w.rc.SetReadWait(nil)
		w.rc = nil
	}
	w.fresh = false
}

// release takes the socket out of the poller, for a connection that does
// not become a session's. It may be called more than once.
func (w *upstreamWait) release() {
	w.stop()
	w.reg.Release()
	w.reg = nil
}

// take hands the registration over to the session (splice.Options).
func (w *upstreamWait) take() *splice.Registration {
	w.stop()
	r := w.reg
	w.reg = nil
	return r
}
