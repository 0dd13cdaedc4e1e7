package rawtcp

import (
	"io"
	"net"
	"syscall"
)

// wrapped is a connection of net's whose Read and Write make raw recvfrom
// and sendto calls through its syscall.RawConn, as Conn's do; deadlines,
// Close and the netpoller's waits are net's own. The proxy uses it for
// connections it gets from net (pooled upstream connections dialled by
// name, listeners it did not open).
type wrapped struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Wrap returns c with raw Read and Write when it is a *net.TCPConn, and c
// as it is otherwise.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &wrapped{TCPConn: tc, rc: rc}
}

// Unwrap returns the connection Wrap wrapped, for those that must see net's
// own type (the splice's event loop, a hijacking handler), and any other
// connection as it is.
func Unwrap(c net.Conn) net.Conn {
	if w, ok := c.(*wrapped); ok {
		return w.TCPConn
	}
	return c
}

func (w *wrapped) Read(p []byte) (int, error) {
	n, err := rawIO(w.rc, nil, p, false)
	if err != nil && err != io.EOF {
		err = opError("read", w.LocalAddr(), w.RemoteAddr(), err)
	}
	return n, err
}

func (w *wrapped) Write(p []byte) (int, error) {
	n, err := rawIO(w.rc, nil, p, true)
	if err != nil {
		err = opError("write", w.LocalAddr(), w.RemoteAddr(), err)
	}
	return n, err
}
