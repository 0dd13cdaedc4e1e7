package server

import (
	"net"
	"os"
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
	ka := rawtcp.Keepalive{Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount}
	var e syscall.Errno
	if err := rc.Control(func(fd uintptr) { e = rawtcp.SetKeepalive(fd, ka) }); err != nil {
		return err
	}
	if e != 0 {
		return &net.OpError{Op: "setsockopt", Net: network, Err: os.NewSyscallError("setsockopt", e)}
	}
	return nil
}
