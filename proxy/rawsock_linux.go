//go:build linux

package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
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
