//go:build linux

package splice

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
	"github.com/sluice-proxy/sluice/internal/sockio"
)

// rawConnOf returns the raw connection to wait on for readability, or nil
// when c is not a socket the session can probe (then reads block in Read).
func rawConnOf(c net.Conn) syscall.RawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	case *rawtcp.Conn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// ready is the callback d passes to syscall.RawConn.Read to wait until its
// source socket is readable without reading (and so without a buffer).
//
// RawConn.Read calls it, and while it returns false waits for the poller to
// report the socket readable and calls it again. Before the first call the
// poller's readiness flag is reset, so a socket that became readable before
// the wait began would never be reported: ready must look for itself. It
// peeks one byte without consuming it. Data, end of stream (0 bytes) and
// errors all mean "go and read"; the Read that follows reports them.
func (d *dir) ready(fd uintptr) bool {
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(&d.peek[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return e != syscall.EAGAIN
		}
	}
}

// readInto is the callback plain (non-TLS) sockets wait with instead of
// ready: it reads for real, into a buffer borrowed for the length of the
// syscall and given back when the socket had nothing. Compared with a peek
// then a read, a frame that is already there costs one syscall instead of
// two, and a wait one fewer; an idle direction still holds no buffer. What
// it read is left in d.rbuf, d.rn and d.rerr for pump.
func (d *dir) readInto(fd uintptr) bool {
	if d.rbuf == nil {
		d.rbuf = bufPool.Get().(*[]byte)
	}
	buf := *d.rbuf
	if d.readCap > 0 && d.readCap < len(buf) {
		buf = buf[:d.readCap]
	}
	n, e := sockio.Recv(fd, buf)
	switch {
	case e == syscall.EAGAIN:
		bufPool.Put(d.rbuf)
		d.rbuf = nil
		return false
	case e != 0:
		d.rn, d.rerr = 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", e)}
	case n == 0:
		d.rn, d.rerr = 0, io.EOF
	default:
		d.rn, d.rerr = n, nil
	}
	return true
}

// probeFn returns the callback pump waits on src with.
func (d *dir) probeFn() func(fd uintptr) bool {
	if d.src.tls {
		return d.ready // crypto/tls must do its own reading
	}
	return d.readInto
}

// canInline says inline sessions are possible here (see poll_linux.go).
const canInline = true

// errWouldBlock is what readNow and writeFd return when the socket cannot
// read or write without waiting.
var errWouldBlock = syscall.EAGAIN

// rawIO is the state of one raw read or write, kept apart from the
// session so that an idle session does not carry it: its callback is bound
// once (a closure per call would allocate), and the objects are pooled.
type rawIO struct {
	buf []byte
	n   int
	err error
	rd  func(fd uintptr) // read
	wr  func(fd uintptr) // write
}

var rawIOPool = sync.Pool{New: func() any { return newRawIO() }}

// newRawIO returns a rawIO with its callbacks bound.
func newRawIO() *rawIO {
	op := new(rawIO)
	op.rd, op.wr = op.read, op.write
	return op
}

// read reads fd into op.buf once.
func (op *rawIO) read(fd uintptr) {
	n, e := sockio.Recv(fd, op.buf)
	switch e {
	case 0:
		op.n = n
	case syscall.EAGAIN:
		op.err = errWouldBlock
	default:
		op.err = e
	}
}

// write writes op.buf to fd until it is all written or fd would block.
func (op *rawIO) write(fd uintptr) {
	for op.n < len(op.buf) {
		k, err := writeFd(fd, op.buf[op.n:])
		if err != nil {
			op.err = err
			return
		}
		op.n += k
	}
}

// readNow reads what d's source socket holds into buf without waiting,
// with op: the calling poller goroutine's own. The system call is a raw
// one: it cannot block, so the scheduler need not know.
func (d *dir) readNow(buf []byte, op *rawIO) (n int, err error) {
	op.buf = buf
	cerr := d.src.raw.Control(op.rd)
	n, err = op.n, op.err
	op.buf, op.n, op.err = nil, 0, nil
	switch {
	case cerr != nil:
		return 0, cerr
	case err == errWouldBlock:
		return 0, err
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: d.src.conn.RemoteAddr().Network(), Err: os.NewSyscallError("recvfrom", err)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// writeNow writes as much of b to p as its socket takes without waiting.
func (p *peer) writeNow(b []byte) (n int, err error) {
	op := rawIOPool.Get().(*rawIO)
	op.buf = b
	cerr := p.raw.Control(op.wr)
	n, err = op.n, op.err
	*op = rawIO{rd: op.rd, wr: op.wr}
	rawIOPool.Put(op)
	if err == errWouldBlock {
		err = nil
	}
	if cerr != nil {
		err = cerr
	} else if err != nil {
		err = &net.OpError{Op: "write", Net: p.conn.RemoteAddr().Network(), Err: os.NewSyscallError("sendto", err)}
	}
	return n, err
}

// writeFd makes one non-blocking write of b to fd (sockio.Send).
func writeFd(fd uintptr, b []byte) (int, error) {
	switch n, e := sockio.Send(fd, b); e {
	case 0:
		return n, nil
	case syscall.EAGAIN:
		return 0, errWouldBlock
	default:
		return 0, e
	}
}
