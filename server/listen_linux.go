package server

import (
	"net"
	"syscall"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
)

// rawListener hands ln's socket to a rawtcp.Listener, whose connections
// make only raw system calls (see package rawtcp): the proxy's sockets,
// from accept to close, then never wake Go's sysmon thread.
func rawListener(ln net.Listener) (net.Listener, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return ln, nil
	}
	return rawtcp.Listen(tl)
}

// On Linux an accepted socket inherits the listening socket's keepalive
// options, so they are set once, on the listener, instead of with four
// setsockopt calls on every connection (KeepAlive -1 stops net from
// setting them again).
var listenConfig = net.ListenConfig{KeepAlive: -1, Control: setListenerKeepAlive}

func setListenerKeepAlive(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
		} {
			if serr = syscall.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "setsockopt", Net: network, Err: serr}
	}
	return nil
}
