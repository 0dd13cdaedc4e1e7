package server

import (
	"context"
	"net"
)

// Client connections get TCP keepalive, so that the clients of idle
// WebSocket sessions that vanished without a FIN (a laptop closed, a NAT
// entry dropped) are found: probes start after keepAliveIdle of silence,
// every keepAliveInterval, and keepAliveCount unanswered ones end the
// connection (about 2.5 minutes in all).
const (
	keepAliveIdle     = 15 // seconds
	keepAliveInterval = 15 // seconds
	keepAliveCount    = 9
)

// listenTCP binds addr with the client keepalive above (and, on Linux,
// deferred accepts: see listen_linux.go).
func listenTCP(addr string) (net.Listener, error) {
	ln, err := listenConfig.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return rawListener(ln)
}
