//go:build !linux

package proxy

import "net"

// Elsewhere connections keep net's own Read and Write.
func newRawSock(c net.Conn) net.Conn { return c }

func underlying(c net.Conn) net.Conn { return c }
