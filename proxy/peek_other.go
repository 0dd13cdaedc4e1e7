//go:build !unix

package proxy

import "net"

// peekAlive cannot look without blocking here; a dead pooled connection
// is then caught by resending the request, where that is safe.
func peekAlive(net.Conn) bool { return true }

// watchHangUp cannot wait without reading here: hang-ups are noticed when
// the answer is written.
func watchHangUp(net.Conn, func()) {}
