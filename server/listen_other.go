//go:build !linux

package server

import (
	"net"
	"time"
)

// Elsewhere, net sets the keepalive options on each accepted connection.
var listenConfig = net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{
	Enable:   true,
	Idle:     keepAliveIdle * time.Second,
	Interval: keepAliveInterval * time.Second,
	Count:    keepAliveCount,
}}

// rawListener: net's own listener serves elsewhere.
func rawListener(ln net.Listener) (net.Listener, error) { return ln, nil }
