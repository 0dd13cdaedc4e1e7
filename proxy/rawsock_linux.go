//go:build linux

package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
	"github.com/sluice-proxy/sluice/internal/sockio"
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
		return rawtcp.Dial(ctx, ap, timeout, upstreamKeepalive)
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", host)
}

// rawSock is a plain TCP connection whose Read and Write make raw
// recvfrom and sendto calls, through syscall.RawConn: deadlines, closing
// and the waits for readiness work as for net's own Read and Write.
//
// A raw call on a non-blocking socket cannot block, so the scheduler need
// not be told about it. That spares entersyscall and exitsyscall on each
// call, and, more, it keeps Go's sysmon thread asleep while the proxy is
// busy: the first ordinary syscall after an idle moment wakes sysmon into
// 20 µs ticks, and on one pinned core that cost about 10 % of the proxy's
// CPU in the small-GET benchmark (bench/README.md).
type rawSock struct {
	*net.TCPConn
	rc syscall.RawConn
}

// newRawSock wraps c when it is a plain TCP connection, and returns c as it
// is otherwise.
func newRawSock(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawSock{TCPConn: tc, rc: rc}
}

// underlying returns the connection a rawSock wraps, for those that must
// see net's own type (the splice's event loop, a hijacking handler).
func underlying(c net.Conn) net.Conn {
	if s, ok := c.(*rawSock); ok {
		return s.TCPConn
	}
	return c
}

// sockOp is the state of one raw read or write. Its callbacks are bound
// once (a closure per call would allocate), and ops are pooled, so that
// concurrent calls on one connection do not share state.
type sockOp struct {
	buf        []byte
	n          int
	errno      syscall.Errno
	recv, send func(fd uintptr) bool
}

var sockOps = sync.Pool{New: func() any {
	op := new(sockOp)
	op.recv, op.send = op.doRecv, op.doSend
	return op
}}

// doRecv reads once into op.buf; false means "wait for readability".
func (op *sockOp) doRecv(fd uintptr) bool {
	n, e := sockio.Recv(fd, op.buf)
	switch e {
	case syscall.EAGAIN:
		return false
	case 0:
		op.n = n
	default:
		op.errno = e
	}
	return true
}

// doSend writes the rest of op.buf; false means "wait for writability".
func (op *sockOp) doSend(fd uintptr) bool {
	for op.n < len(op.buf) {
		n, e := sockio.Send(fd, op.buf[op.n:])
		switch e {
		case syscall.EAGAIN:
			return false
		case 0:
			op.n += n
		default:
			op.errno = e
			return true
		}
	}
	return true
}

func (s *rawSock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno, err := s.do(p, false)
	switch {
	case err != nil:
		return 0, s.opError("read", err)
	case errno != 0:
		return 0, s.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *rawSock) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno, err := s.do(p, true)
	switch {
	case err != nil:
		return n, s.opError("write", err)
	case errno != 0:
		return n, s.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// do makes one raw read into p, or writes all of p, waiting on the
// netpoller as net's own calls do. err is RawConn's (a deadline, a closed
// connection); errno is the syscall's.
func (s *rawSock) do(p []byte, write bool) (n int, errno syscall.Errno, err error) {
	op := sockOps.Get().(*sockOp)
	op.buf = p
	if write {
		err = s.rc.Write(op.send)
	} else {
		err = s.rc.Read(op.recv)
	}
	n, errno = op.n, op.errno
	op.buf, op.n, op.errno = nil, 0, 0
	sockOps.Put(op)
	return n, errno, err
}

// opError words err as net's Read and Write do ("read tcp a->b: ..."), not
// as RawConn does ("raw-read ..."), so that logs read the same.
func (s *rawSock) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}
