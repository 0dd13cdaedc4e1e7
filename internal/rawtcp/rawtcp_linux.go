// Package rawtcp provides TCP listeners and connections whose system calls,
// from accept or connect to close, are raw ones, while their waits for
// readiness and their deadlines still go through Go's netpoller.
//
// Why: Go's ordinary syscalls pass through the scheduler (entersyscall),
// and the first one after an idle moment wakes the runtime's sysmon thread,
// which then ticks every 20 µs while the process is busy; a slow one can
// also make the scheduler hand the P to another thread. On a proxy pinned
// to one core that cost 10–15 % of its CPU in the WebSocket handshake
// benchmark (bench/README.md), where each session accepts, dials and closes
// two sockets. A raw call on a non-blocking socket cannot block, so the
// scheduler need not know of it. net's accept, connect, setsockopt and
// close are ordinary syscalls.
//
// A socket joins Go's netpoller, as an os.File (os.NewFile registers a
// non-blocking descriptor with raw calls), only when a call on it must
// wait there: an accepted connection whose request is there and whose
// answer goes out at once never does (see Conn), nor does one whose reads
// wait in another poller (SetReadWait). Reads and writes are raw
// recvfrom and sendto calls either way. The one ordinary call left is
// os.File's close: Close releases the socket at once with a raw call and
// leaves only the descriptor number to be closed, in batches (see
// Conn.Close and reap).
package rawtcp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/sluice-proxy/sluice/internal/sockio"
)

// Conn is a TCP connection. It implements net.Conn and syscall.Conn.
//
// A Conn, accepted or dialled, starts as a bare descriptor, and gets its
// os.File (f) only when a call must wait on Go's netpoller (see wait).
// Why: making the file costs a fcntl, an epoll_ctl into Go's set and a
// finalizer, and its release a dup3, another epoll_ctl and a batched
// close. For the two sockets of a WebSocket handshake session that was a
// tenth of the proxy's user time (bench/README.md), and neither needs the
// file: with deferred accepts the client's request is there when it is
// taken, and the 101 goes out at once; the upstream waits for its 101 in
// the splice's poller (SetReadWait), which then keeps it. Such a socket is
// released by one close.
//
// Without the file's reference count, Conn keeps its own (uses), so that
// the descriptor number cannot be closed, and given to another socket,
// while a raw call on it is in flight: Close marks the count closing, and
// whoever brings it to zero releases the descriptor (finish). Every raw
// call goes through that count (control), with or without the file, which
// is also cheaper than the file's own RawConn.Control.
type Conn struct {
	fd   int
	uses atomic.Int64 // raw calls in flight on fd, plus closing once Close began
	fmu  sync.Mutex   // serializes making f with Close
	hasF atomic.Bool  // f and rc are set (once, with fmu held)
	f    *os.File
	rc   syscall.RawConn // f's, to wait with

	raddr  *net.TCPAddr
	laddr  atomic.Pointer[net.TCPAddr] // looked up on first use
	closed atomic.Bool
	// waiting counts calls that may wait on the netpoller (Read, Write,
	// and RawConn's Read and Write): Close must wake them (see Close).
	waiting atomic.Int32
	rd, wd  deadline
	dlMu    sync.Mutex // serializes handing deadlines to f
	// readWait, when set, is how a Read without the file waits (see
	// SetReadWait).
	readWait func(deadline time.Time)
}

// deadline is the read or the write deadline of a Conn. It is kept here
// and handed to the os.File only when a call is about to wait, because
// changing the file's deadline moves a runtime timer (a lock and a heap
// update), and most calls never wait: a request read finds its bytes
// there, a write goes at once. An HTTP exchange that sets and clears
// deadlines around each call would otherwise move timers several times
// for nothing. A deadline the file was given and the user has since
// changed is handed over before the next call, so that the file never
// fails a call on a deadline the user no longer has.
//
// A Conn's two deadlines and their mutex take 40 bytes, and an idle
// WebSocket session holds two Conns: a deadline keeps only what it must.
type deadline struct {
	at    atomic.Int64 // the user's deadline (see monoOf); 0: none
	given atomic.Int64 // what the file has; changed with Conn.dlMu held
}

// epoch is the origin of deadline values. It carries a monotonic clock
// reading, so that deadlines compare (and reach the file) as net's own do.
var epoch = time.Now()

// monoOf turns t into a deadline value: 0 for none, else at least 1.
func monoOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(int64(t.Sub(epoch)), 1)
}

// passed reports whether d is set and due.
func (d *deadline) passed() bool {
	v := d.at.Load()
	return v != 0 && int64(time.Since(epoch)) >= v
}

// set records t as the deadline, and hands it to the file at once if a
// call may be waiting with the one before.
func (c *Conn) set(d *deadline, t time.Time) {
	d.at.Store(monoOf(t))
	if c.waiting.Load() > 0 {
		c.give(d)
	}
}

// give hands d to the file, if the file has another deadline. Callers
// that may wait count themselves in c.waiting before they call it, and set
// calls it after storing the deadline, so that whichever runs last gives
// the latest deadline.
func (c *Conn) give(d *deadline) {
	if !c.hasF.Load() {
		return // nothing waits without the file; the first wait gives it
	}
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	v := d.at.Load()
	if v == d.given.Load() {
		return
	}
	d.given.Store(v)
	t := time.Time{}
	if v != 0 {
		t = epoch.Add(time.Duration(v))
	}
	if d == &c.wd {
		c.f.SetWriteDeadline(t)
	} else {
		c.f.SetReadDeadline(t)
	}
}

// stale reports whether the file has a deadline the user has since
// changed: it must be given the new one before a call goes through the
// netpoller, which would otherwise fail the call on the old one.
func (d *deadline) stale() bool {
	g := d.given.Load()
	return g != 0 && g != d.at.Load()
}

// newConn makes a Conn of socket fd, without its file (see wait).
func newConn(fd int, raddr *net.TCPAddr) *Conn {
	return &Conn{fd: fd, raddr: raddr}
}

// closing marks Conn.uses once Close has begun: no call may start then.
const closing = 1 << 62

// acquire counts a raw call in, unless the connection is closing.
func (c *Conn) acquire() bool {
	for {
		v := c.uses.Load()
		if v&closing != 0 {
			return false
		}
		if c.uses.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// release counts a raw call out; the last one after Close releases the
// descriptor.
func (c *Conn) release() {
	if c.uses.Add(-1) == closing {
		c.finish()
	}
}

// control runs fn on the descriptor, which stays open meanwhile. It fails
// with net.ErrClosed once Close has begun.
func (c *Conn) control(fn func(fd uintptr)) error {
	if !c.acquire() {
		return net.ErrClosed
	}
	fn(uintptr(c.fd))
	c.release()
	return nil
}

// wait makes sure the connection has its file, for a call that is about to
// wait for readiness. It fails with net.ErrClosed once Close has begun.
//
// Registering a socket with the netpoller reports its present readiness,
// and every wait looks for itself before it waits (see op), so nothing
// that happened before the registration is missed.
func (c *Conn) wait() error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	if c.hasF.Load() {
		return nil
	}
	c.fmu.Lock()
	defer c.fmu.Unlock()
	if c.closed.Load() {
		return net.ErrClosed
	}
	if !c.hasF.Load() {
		c.makeFile()
	}
	return nil
}

// makeFile gives c its file. It is called with c.fmu held, or before c is
// shared.
func (c *Conn) makeFile() {
	c.f = os.NewFile(uintptr(c.fd), "tcp")
	// An os.File's SyscallConn cannot fail; and the file must not be
	// dropped, or its finalizer would close c.fd behind our back.
	c.rc, _ = c.f.SyscallConn()
	c.hasF.Store(true)
}

// finish releases the descriptor, once Close has begun and no raw call is
// in flight: at once without a file; with one, in the next batch (the
// socket itself was released by Close).
func (c *Conn) finish() {
	if c.hasF.Load() {
		closeSoon(c.f)
	} else {
		closeFd(c.fd)
	}
}

// rawConn is the connection's syscall.RawConn, counting the calls that may
// wait. It is the Conn itself under another type, so that it costs no
// field.
type rawConn Conn

func (r *rawConn) Control(f func(fd uintptr)) error { return (*Conn)(r).control(f) }

// Read and Write cannot tell whether f will wait, so they give the file
// its deadline first.
func (r *rawConn) Read(f func(fd uintptr) bool) error  { return (*Conn)(r).rawWait(f, false) }
func (r *rawConn) Write(f func(fd uintptr) bool) error { return (*Conn)(r).rawWait(f, true) }

func (c *Conn) rawWait(f func(fd uintptr) bool, write bool) error {
	if err := c.wait(); err != nil {
		return err
	}
	c.waiting.Add(1)
	var err error
	if write {
		c.give(&c.wd)
		err = c.rc.Write(f)
	} else {
		c.give(&c.rd)
		err = c.rc.Read(f)
	}
	c.waiting.Add(-1)
	return err
}

// op is the state of one raw read or write. Its callbacks are bound once
// (a closure per call would allocate), and ops are pooled, so that
// concurrent calls on one connection do not share state.
type op struct {
	c          *Conn
	dl         *deadline // c's, for a Read or Write: given to the file before a wait
	buf        []byte
	n          int
	errno      syscall.Errno
	closed     bool // the call found the connection closed by Close
	done       bool // doConnectNow: the connect has finished
	recv, send func(fd uintptr) bool
	connect    func(fd uintptr) bool
	connectNow func(fd uintptr)
}

var ops = sync.Pool{New: func() any {
	o := new(op)
	o.recv, o.send, o.connect, o.connectNow = o.doRecv, o.doSend, o.doConnect, o.doConnectNow
	return o
}}

// getOp returns a clean op for c; putOp gives it back.
func getOp(c *Conn) *op {
	o := ops.Get().(*op)
	o.c = c
	return o
}

func putOp(o *op) {
	*o = op{recv: o.recv, send: o.send, connect: o.connect, connectNow: o.connectNow}
	ops.Put(o)
}

// isClosed reports whether the op's Conn, if any, was closed by Close.
// Close shuts the socket down, so a waiting call wakes up and ends here.
func (o *op) isClosed() bool {
	o.closed = o.c != nil && o.c.closed.Load()
	return o.closed
}

func (o *op) doRecv(fd uintptr) bool {
	if o.isClosed() {
		return true
	}
	n, e := sockio.Recv(fd, o.buf)
	switch e {
	case syscall.EAGAIN:
		o.beforeWait()
		return false
	case 0:
		o.n = n
	default:
		o.errno = e
	}
	return true
}

func (o *op) doSend(fd uintptr) bool {
	for o.n < len(o.buf) {
		if o.isClosed() {
			return true
		}
		n, e := sockio.Send(fd, o.buf[o.n:])
		switch e {
		case syscall.EAGAIN:
			o.beforeWait()
			return false
		case 0:
			o.n += n
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// beforeWait gives the file the call's deadline: the callback is about to
// report that the call must wait.
func (o *op) beforeWait() {
	if o.dl != nil {
		o.c.give(o.dl)
	}
}

// rawIO makes one raw recvfrom into p, or writes all of p with raw sendto
// calls, through rc, waiting on the netpoller as net's own Read and Write
// do; c, when not nil, is the Conn whose Close ends the wait. It returns
// what net.Conn's Read or Write would, with errors unworded (see opError).
func rawIO(rc syscall.RawConn, c *Conn, p []byte, write bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := getOp(c)
	o.buf = p
	if c != nil {
		// c's deadlines are its own (see deadline); the caller counts
		// itself in c.waiting.
		o.dl = &c.rd
		if write {
			o.dl = &c.wd
		}
		if o.dl.passed() {
			putOp(o)
			return 0, os.ErrDeadlineExceeded
		}
		if o.dl.stale() {
			c.give(o.dl)
		}
	}
	var err error
	call := "read"
	if write {
		err, call = rc.Write(o.send), "write"
	} else {
		err = rc.Read(o.recv)
	}
	n, errno, closed := o.n, o.errno, o.closed
	putOp(o)
	switch {
	case closed:
		return n, net.ErrClosed
	case err != nil:
		return n, err
	case errno != 0:
		return n, os.NewSyscallError(call, errno)
	case n == 0 && !write:
		return 0, io.EOF
	}
	return n, nil
}

// SetReadWait has c's reads wait with fn, rather than with Go's netpoller,
// until it is set to nil. fn must return once the socket may have become
// readable since the read that found it empty, or, when deadline is not
// zero, once deadline has passed; it may return early. It is for a socket
// that waits once, for an answer, while registered with another poller
// (the splice's, which then takes the registration over): the socket never
// gets its file. Close wakes a read waiting in fn by shutting the socket
// down, which that poller reports. A read waits with the deadline it found
// when it began waiting. It must not be called while a call on c runs.
func (c *Conn) SetReadWait(fn func(deadline time.Time)) { c.readWait = fn }

// AwaitRead waits in the wait that SetReadWait set, as a read that found
// the socket empty would, and returns at once without one. It is for a
// caller that knows the socket is empty (it has just sent the request
// whose answer it awaits): the read that would find nothing is saved. The
// wait must then also return once the socket may have become readable
// since it was set. The read deadline applies; AwaitRead fails with
// net.ErrClosed once Close has begun.
func (c *Conn) AwaitRead() error {
	if c.readWait == nil || c.hasF.Load() {
		return nil
	}
	return c.waitElsewhere()
}

// Read reads once into p, as net.Conn's Read does.
func (c *Conn) Read(p []byte) (n int, err error) {
	done := false
	if !c.hasF.Load() {
		n, done, err = c.tryIO(p, false)
		for !done && c.readWait != nil {
			if err = c.waitElsewhere(); err != nil {
				break
			}
			n, done, err = c.tryIO(p, false)
		}
		done = done || err != nil
	}
	if !done {
		if err = c.wait(); err == nil {
			c.waiting.Add(1)
			n, err = rawIO(c.rc, c, p, false)
			c.waiting.Add(-1)
		}
	}
	// A read that met the shutdown of a concurrent Close saw the end of
	// the stream: it reports the Close, as net's would.
	if err != nil && (err != io.EOF || c.closed.Load()) {
		err = c.opError("read", err)
	}
	return n, err
}

// Write writes all of p unless an error (a deadline) stops it.
func (c *Conn) Write(p []byte) (n int, err error) {
	done := false
	if !c.hasF.Load() {
		n, done, err = c.tryIO(p, true)
	}
	if !done {
		if err = c.wait(); err == nil {
			var k int
			c.waiting.Add(1)
			k, err = rawIO(c.rc, c, p[n:], true)
			c.waiting.Add(-1)
			n += k
		}
	}
	if err != nil {
		err = c.opError("write", err)
	}
	return n, err
}

// tryIO is Read or Write on a connection without its file: one raw
// recvfrom, or sendto calls until p is written, through control. It
// reports done when the call is over, with what rawIO would return;
// otherwise it met EAGAIN, after writing n bytes, and the caller must
// wait with the file.
func (c *Conn) tryIO(p []byte, write bool) (n int, done bool, err error) {
	call, dl := "read", &c.rd
	if write {
		call, dl = "write", &c.wd
	}
	if len(p) == 0 {
		return 0, true, nil
	}
	if dl.passed() {
		return 0, true, os.ErrDeadlineExceeded
	}
	if !c.acquire() {
		return 0, true, net.ErrClosed
	}
	var e syscall.Errno
	if write {
		for n < len(p) && e == 0 {
			var k int
			k, e = sockio.Send(uintptr(c.fd), p[n:])
			n += k
		}
	} else {
		n, e = sockio.Recv(uintptr(c.fd), p)
	}
	c.release()
	switch {
	case e == syscall.EAGAIN:
		return n, false, nil
	case e != 0:
		return n, true, os.NewSyscallError(call, e)
	case n == 0 && !write:
		return 0, true, io.EOF
	}
	return n, true, nil
}

// waitElsewhere is a Read's wait with readWait. It is counted in waiting,
// so that Close shuts the socket down to end it, and in uses, so that the
// descriptor stays open until it has: closing it would take the socket
// out of the poller's set, and the report of the shutdown with it.
func (c *Conn) waitElsewhere() error {
	if !c.acquire() {
		return net.ErrClosed
	}
	defer c.release()
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	if c.closed.Load() {
		return net.ErrClosed
	}
	var t time.Time
	if v := c.rd.at.Load(); v != 0 {
		t = epoch.Add(time.Duration(v))
	}
	c.readWait(t)
	return nil
}

func (c *Conn) opError(op string, err error) error {
	if c.closed.Load() {
		// Whether the call found the socket shut down or its file
		// released (os.File's own error), it was closed here.
		err = net.ErrClosed
	}
	return opError(op, c.LocalAddr(), c.raddr, err)
}

// opError words a failure as net's Read and Write do ("read tcp a->b:
// ..."), not as RawConn does ("raw-read ..."), so that logs read the same.
func opError(op string, local, remote net.Addr, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	var errno syscall.Errno
	if _, ok := err.(*os.SyscallError); !ok && errors.As(err, &errno) {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: local, Addr: remote, Err: err}
}

// Close releases the socket at once, with raw calls.
//
// A connection that never waited has no file and no registration: its
// descriptor is closed as soon as no raw call is in flight on it (see
// Conn), which is at once unless a call races with Close.
//
// A connection with a file hands it to the next batch of releases (see
// reap): the file's close is an ordinary syscall. Its socket is closed now
// by putting a placeholder (/dev/null) in its place under the same
// descriptor number (dup3): the kernel releases the socket exactly as
// close would (the peer sees the FIN, or a reset when data was left
// unread, and every epoll set forgets it), while the number stays taken
// until the batch closes the placeholder. A call waiting on the netpoller
// would not be woken by that (no event comes from a placeholder), so when
// one may be waiting the socket is shut down instead, which wakes it, and
// the batch closes the socket itself.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return opError("close", c.LocalAddr(), c.raddr, net.ErrClosed)
	}
	// From here on no file is made (see wait), and Close alone changes
	// the descriptor: raw calls in flight only use it.
	c.fmu.Lock()
	if c.hasF.Load() {
		// A call that starts waiting after this load finds closed set
		// (it looks before each wait): see op.
		fd := uintptr(c.fd)
		if c.waiting.Load() > 0 || placeholder() < 0 || replaceFd(fd) != 0 {
			shutdown(fd, syscall.SHUT_RDWR)
		}
	} else if c.waiting.Load() > 0 {
		// A read waits with readWait: the shutdown is reported to the
		// poller it waits on. The wait holds the descriptor open (see
		// waitElsewhere) until it has seen that.
		shutdown(uintptr(c.fd), syscall.SHUT_RDWR)
	}
	c.fmu.Unlock()
	if c.uses.Or(closing) == 0 {
		c.finish()
	}
	return nil
}

// placeholderFd is /dev/null, opened once for good, that closed sockets'
// numbers point at until their batch. Listen opens it, while descriptors
// are plentiful; if that failed, each Close tries again.
var placeholderFd struct {
	mu  sync.Mutex
	fd1 atomic.Int32 // the descriptor + 1; 0 while not open
}

// placeholder returns the placeholder's descriptor, or -1 if it cannot be
// opened (out of descriptors): Close then shuts sockets down instead.
func placeholder() int {
	if fd1 := placeholderFd.fd1.Load(); fd1 > 0 {
		return int(fd1) - 1
	}
	placeholderFd.mu.Lock()
	defer placeholderFd.mu.Unlock()
	if fd1 := placeholderFd.fd1.Load(); fd1 > 0 {
		return int(fd1) - 1
	}
	fd, err := syscall.Open("/dev/null", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	placeholderFd.fd1.Store(int32(fd) + 1)
	return fd
}

// replaceFd makes fd a duplicate of the placeholder, releasing the socket.
func replaceFd(fd uintptr) syscall.Errno {
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_DUP3, uintptr(placeholder()), fd, syscall.O_CLOEXEC)
		if e != syscall.EINTR && e != syscall.EBUSY {
			return e
		}
	}
}

// CloseWrite shuts down the writing side (the peer reads the end of the
// stream), as net.TCPConn's does.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return opError("close", c.LocalAddr(), c.raddr, net.ErrClosed)
	}
	var e syscall.Errno
	if err := c.control(func(fd uintptr) { e = shutdown(fd, syscall.SHUT_WR) }); err != nil {
		return opError("close", c.LocalAddr(), c.raddr, err)
	}
	if e != 0 {
		return opError("close", c.LocalAddr(), c.raddr, os.NewSyscallError("shutdown", e))
	}
	return nil
}

func shutdown(fd uintptr, how int) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, uintptr(how), 0)
	return e
}

// LocalAddr returns the local address, looked up once.
func (c *Conn) LocalAddr() net.Addr {
	if a := c.laddr.Load(); a != nil {
		return a
	}
	var a *net.TCPAddr
	c.control(func(fd uintptr) { a = sockName(fd, syscall.SYS_GETSOCKNAME) })
	if a == nil {
		return &net.TCPAddr{}
	}
	c.laddr.Store(a)
	return a
}

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline, SetReadDeadline and SetWriteDeadline behave as net.Conn's;
// the file gets the deadline only when a call waits (see deadline).
func (c *Conn) SetDeadline(t time.Time) error {
	c.set(&c.rd, t)
	c.set(&c.wd, t)
	return nil
}

func (c *Conn) SetReadDeadline(t time.Time) error  { c.set(&c.rd, t); return nil }
func (c *Conn) SetWriteDeadline(t time.Time) error { c.set(&c.wd, t); return nil }

// SyscallConn gives raw access to the socket, for the splice's own polling.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return (*rawConn)(c), nil }

// sockName returns the address getsockname or getpeername (call) reports
// for fd, or nil.
func sockName(fd uintptr, call uintptr) *net.TCPAddr {
	var rsa syscall.RawSockaddrAny
	n := uint32(unsafe.Sizeof(rsa))
	_, _, e := syscall.RawSyscall(call, fd, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return nil
	}
	return tcpAddrOf(&rsa)
}

// tcpAddrOf converts a raw IPv4 or IPv6 socket address.
func tcpAddrOf(rsa *syscall.RawSockaddrAny) *net.TCPAddr {
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return &net.TCPAddr{IP: net.IP{sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3]}, Port: int(p[0])<<8 | int(p[1])}
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		a := &net.TCPAddr{IP: make(net.IP, net.IPv6len), Port: int(p[0])<<8 | int(p[1])}
		copy(a.IP, sa.Addr[:])
		if sa.Scope_id != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.Scope_id)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a
	}
	return nil
}

// Listener accepts TCP connections with raw accept4 calls.
type Listener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   net.Addr
	closed atomic.Bool
	accept func(fd uintptr) bool // bound once; guarded by mu
	mu     sync.Mutex            // one Accept at a time owns the fields below
	nfd    int
	errno  syscall.Errno
	rsa    syscall.RawSockaddrAny
}

// Listen takes over ln: from then on the socket belongs to the returned
// Listener, and ln is closed. TCP_NODELAY is set on the listening socket,
// which Linux copies to every accepted one (net sets it per connection).
func Listen(ln *net.TCPListener) (*Listener, error) {
	addr := ln.Addr()
	f, err := ln.File() // a duplicate that stays non-blocking and polled
	ln.Close()
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err == nil {
		var e syscall.Errno
		rc.Control(func(fd uintptr) { e = setInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1) })
		if e != 0 {
			err = os.NewSyscallError("setsockopt", e)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &Listener{f: f, rc: rc, addr: addr}
	l.accept = l.doAccept
	placeholder() // for Close, while descriptors are plentiful
	return l, nil
}

func (l *Listener) doAccept(fd uintptr) bool {
	for {
		n := uint32(unsafe.Sizeof(l.rsa))
		r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&l.rsa)),
			uintptr(unsafe.Pointer(&n)), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			l.nfd, l.errno = int(r), 0
			return true
		case syscall.EAGAIN:
			return false
		case syscall.EINTR, syscall.ECONNABORTED:
			// Interrupted, or a client that gave up in the queue.
		default:
			l.nfd, l.errno = -1, e
			return true
		}
	}
}

// Accept waits for and returns the next connection, a *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	l.mu.Lock()
	err := l.rc.Read(l.accept)
	fd, errno := l.nfd, l.errno
	var raddr *net.TCPAddr
	if err == nil && errno == 0 {
		raddr = tcpAddrOf(&l.rsa)
	}
	l.mu.Unlock()
	if l.closed.Load() || errors.Is(err, os.ErrClosed) {
		if err == nil && errno == 0 {
			closeFd(fd)
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	if err == nil && errno != 0 {
		err = os.NewSyscallError("accept4", errno)
	}
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
	// No file yet: most accepted connections have their request there
	// (the listener defers accepts), and many never wait (see Conn).
	return newConn(fd, raddr), nil
}

// Close stops the listener; a waiting Accept returns net.ErrClosed.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	return l.f.Close()
}

// Addr returns the listening address.
func (l *Listener) Addr() net.Addr { return l.addr }

// SyscallConn gives raw access to the listening socket.
func (l *Listener) SyscallConn() (syscall.RawConn, error) { return l.rc, nil }

// Keepalive is the TCP keepalive Dial sets on a connection: probes start
// after Idle seconds of silence and come every Interval seconds; Count
// unanswered ones end the connection. The zero value leaves keepalive off.
type Keepalive struct{ Idle, Interval, Count int }

// Dial connects to addr, waiting for timeout at most (0: no limit of its
// own) or until ctx is done. Failures are *net.OpError with Op "dial", as
// net.Dialer's are. The socket gets TCP_NODELAY, and keepalive when ka is
// not zero.
func Dial(ctx context.Context, addr netip.AddrPort, timeout time.Duration, ka Keepalive) (*Conn, error) {
	raddr := net.TCPAddrFromAddrPort(addr)
	fail := func(err error) (*Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	ip := addr.Addr().Unmap()
	var sa syscall.RawSockaddrAny
	var salen uintptr
	family := syscall.AF_INET
	if ip.Is4() {
		sa4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&sa))
		sa4.Family = syscall.AF_INET
		sa4.Addr = ip.As4()
		putPort(&sa4.Port, addr.Port())
		salen = unsafe.Sizeof(*sa4)
	} else {
		if ip.Zone() != "" {
			return fail(errors.New("zoned IPv6 addresses are not supported here"))
		}
		family = syscall.AF_INET6
		sa6 := (*syscall.RawSockaddrInet6)(unsafe.Pointer(&sa))
		sa6.Family = syscall.AF_INET6
		sa6.Addr = ip.As16()
		putPort(&sa6.Port, addr.Port())
		salen = unsafe.Sizeof(*sa6)
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family),
		syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if e != 0 {
		return fail(os.NewSyscallError("socket", e))
	}
	fd := uintptr(r)
	e = setInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	if e == 0 && ka != (Keepalive{}) {
		e = SetKeepalive(fd, ka)
	}
	if e != 0 {
		closeFd(int(fd))
		return fail(os.NewSyscallError("setsockopt", e))
	}
	for {
		_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), salen)
		if e != syscall.EINTR {
			break
		}
	}
	switch e {
	case 0, syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
	default:
		closeFd(int(fd))
		return fail(os.NewSyscallError("connect", e))
	}
	// Its file comes, as an accepted one's, with its first wait: a
	// connect on loopback is done by the time it is looked at, and a
	// WebSocket upgrade waits for its answer elsewhere (SetReadWait).
	c := newConn(int(fd), raddr)
	if e != 0 {
		if err := c.awaitConnect(ctx, timeout); err != nil {
			c.closeNow()
			return fail(err)
		}
	}
	return c, nil
}

// awaitConnect waits for a connect in progress to finish. On loopback it
// has, by the time connect returns: that is looked at first, before any
// deadline or cancellation is set up.
func (c *Conn) awaitConnect(ctx context.Context, timeout time.Duration) error {
	o := getOp(c)
	defer putOp(o)
	c.control(o.connectNow)
	if !o.done {
		if timeout > 0 {
			c.SetWriteDeadline(time.Now().Add(timeout))
		}
		stop := func() bool { return true }
		if ctx.Done() != nil {
			stop = context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
		}
		err := (*rawConn)(c).Write(o.connect)
		if !stop() {
			// Cancelled: the deadline may be set to the past at any
			// moment now, so the connection is not handed on.
			return ctx.Err()
		}
		c.SetWriteDeadline(time.Time{})
		if err != nil {
			return err
		}
	}
	if o.errno != 0 {
		return os.NewSyscallError("connect", o.errno)
	}
	return nil
}

func (o *op) doConnectNow(fd uintptr) { o.done = o.doConnect(fd) }

// doConnect reports whether the connect on fd has finished, leaving its
// failure, if any, in o.errno. A socket with a peer is connected; that is
// asked first because it is the common answer (on loopback the connect is
// done by the time it is first looked at), and one call settles it.
// Without a peer, SO_ERROR tells a failure from a connect still under way
// (the poller can also report a socket early).
func (o *op) doConnect(fd uintptr) bool {
	var rsa syscall.RawSockaddrAny
	n := uint32(unsafe.Sizeof(rsa))
	if _, _, e := syscall.RawSyscall(syscall.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n))); e == 0 {
		return true
	}
	v, e := getInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	if e != 0 {
		o.errno = e
		return true
	}
	switch syscall.Errno(v) {
	case 0, syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
		return false
	default:
		o.errno = syscall.Errno(v)
		return true
	}
}

// closeNow releases a connection that never reached its user.
func (c *Conn) closeNow() {
	c.closed.Store(true)
	c.uses.Store(closing)
	if c.hasF.Load() {
		c.f.Close() // at once: a connect may still be under way
	} else {
		closeFd(c.fd)
	}
}

func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func setInt(fd uintptr, level, opt, v int) syscall.Errno {
	val := int32(v)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), 4, 0)
	return e
}

func getInt(fd uintptr, level, opt int) (int, syscall.Errno) {
	var val int32
	n := uint32(4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), uintptr(unsafe.Pointer(&n)), 0)
	return int(val), e
}

// SetKeepalive turns keepalive on for socket fd with ka's timing (a
// listening socket passes it on to the sockets it accepts).
func SetKeepalive(fd uintptr, ka Keepalive) syscall.Errno {
	for _, o := range [...]struct{ level, opt, v int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, ka.Idle},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, ka.Interval},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, ka.Count},
	} {
		if e := setInt(fd, o.level, o.opt, o.v); e != 0 {
			return e
		}
	}
	return 0
}

func closeFd(fd int) {
	if fd >= 0 {
		syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
	}
}

// The descriptors of closed connections are released in batches, by one
// goroutine at most reapDelay after the first of a batch was closed:
// os.File's close is an ordinary syscall, and a batch wakes sysmon once
// rather than once per connection. The sockets are shut down already, so
// the peers do not wait for the batch; what waits is the descriptor
// number, and the memory behind it.
var reaper = struct {
	mu    sync.Mutex
	delay time.Duration // reapDelay; tests hold batches back with it
	files []*os.File
	spare []*os.File // the previous batch's slice, for reuse
	armed bool
}{delay: reapDelay}

const reapDelay = 20 * time.Millisecond

func closeSoon(f *os.File) {
	reaper.mu.Lock()
	reaper.files = append(reaper.files, f)
	if !reaper.armed {
		reaper.armed = true
		time.AfterFunc(reaper.delay, reap)
	}
	reaper.mu.Unlock()
}

// reap closes the files of one batch, on the timer's goroutine.
func reap() {
	reaper.mu.Lock()
	files := reaper.files
	reaper.files, reaper.spare = reaper.spare[:0], nil
	reaper.armed = false
	reaper.mu.Unlock()
	for i, f := range files {
		f.Close()
		files[i] = nil
	}
	reaper.mu.Lock()
	if reaper.spare == nil && cap(files) <= 4096 {
		reaper.spare = files[:0]
	}
	reaper.mu.Unlock()
}
