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
//
// The listener also defers accepts (TCP_DEFER_ACCEPT, as nginx's "listen
// ... deferred"): a connection is handed over when its first bytes have
// come, so the request is there to read at once, instead of an accept, a
// read that finds nothing and a wait on the poller in between. HTTP and
// TLS clients speak first. One that connects and says nothing is handed
// over anyway after deferAccept seconds (at the kernel's first SYN-ACK
// retransmission), and from then on read_header applies as usual.
var listenConfig = net.ListenConfig{KeepAlive: -1, Control: setListenerOptions}

const deferAccept = 1 // seconds

func setListenerOptions(network, address string, rc syscall.RawConn) error {
	ka := rawtcp.Keepalive{Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount}
	var serr error
	err := rc.Control(func(fd uintptr) {
		if e := rawtcp.SetKeepalive(fd, ka); e != 0 {
			serr = e
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, deferAccept)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "setsockopt", Net: network, Err: os.NewSyscallError("setsockopt", serr)}
	}
	return nil
}
