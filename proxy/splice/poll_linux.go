//go:build linux

package splice

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// The readiness-driven driver. An idle direction holds no goroutine and no
// buffer: its source socket is registered in one package-level epoll
// instance with EPOLLONESHOT, and a single goroutine waits in epoll_wait for
// all of them. When a socket becomes readable, that goroutine starts a
// goroutine for the direction, which reads without blocking and feeds the
// bytes to the direction's state machine until the socket is empty, re-arms
// the registration and returns.
//
// Why a goroutine per event rather than a fixed pool of workers: a direction
// may block for up to WriteTimeout writing to a slow peer, or in a rate-limit
// wait, and a fixed pool would let a few such sessions hold up all others.
// Goroutines are cheap to start (the runtime reuses their descriptors and
// stacks), and this one lives only while there is something to do.
//
// A direction that is busy is not idle and may hold its goroutine and buffer
// for a while: in a write to a slow peer, or in a rate-limit wait (admit
// waits in the middle of a chunk it has read; letting go of the goroutine
// there would mean keeping the rest of the chunk). Throttled directions
// therefore cost what they cost before; idle ones cost nothing.
//
// Go's own netpoller keeps the socket too (it is edge-triggered and sees no
// waiter, so it stays quiet); registering a socket in a second epoll
// instance is allowed. Every epoll_ctl on a socket runs inside
// syscall.RawConn.Control or Read, which hold the descriptor open, so that a
// concurrent Close cannot free the number for another socket to take while
// we still use it (it would change someone else's registration).

// Driver states of a polled direction (dir.ev). The zero value is for a
// direction the poller does not drive.
const (
	evNone     int32 = iota // not polled
	evIdle                  // registered and armed; no goroutine
	evRunning               // a goroutine drives it
	evNotified              // as evRunning, and readiness was reported meanwhile
	evDone                  // its source is finished; it is driven no more
)

// watch is a registration in the poller: a direction and its session.
type watch struct {
	s   *Session
	d   *dir
	gen uint32 // tells a registration from an earlier one in the same slot
}

// poller owns the epoll instance and the goroutine waiting on it. The
// goroutine runs while at least one socket is registered; it is started by
// the first registration and returns after the last one is removed, so that
// a process without sessions holds none of its goroutines. The epoll
// instance and the wake-up pipe, once made, live as long as the process.
type poller struct {
	once    sync.Once
	initErr error
	epfd    int
	wake    [2]int // pipe: written to make the goroutine look at n

	mu      sync.Mutex
	slots   []watch  // guarded by mu; index = token>>32
	free    []uint32 // guarded by mu; unused slots
	gen     uint32   // guarded by mu; last generation handed out
	n       int      // guarded by mu; registered sockets
	running bool     // guarded by mu; the wait goroutine runs
}

var thePoller poller

// wakeToken marks the pipe's events; slot tokens have a generation >= 1.
const wakeToken = 0

func (p *poller) init() error {
	p.once.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			p.initErr = fmt.Errorf("splice: creating epoll instance: %w", err)
			return
		}
		if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
			syscall.Close(fd)
			p.initErr = fmt.Errorf("splice: creating poller wake-up pipe: %w", err)
			return
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
		setToken(&ev, wakeToken)
		if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
			syscall.Close(fd)
			syscall.Close(p.wake[0])
			syscall.Close(p.wake[1])
			p.initErr = fmt.Errorf("splice: registering poller wake-up pipe: %w", err)
			return
		}
		p.epfd = fd
	})
	return p.initErr
}

func setToken(ev *syscall.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func tokenOf(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// pollFlags: readable, peer's half close (also readable), one report per
// arming. Errors and hang-ups are always reported.
const pollFlags = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// startPolled starts d under the poller and reports whether it could; if not,
// the caller drives d with a goroutine. The session holds a reference for d
// that dirDone or unwatch releases. It is called with s.mu held, before
// teardown can run: teardown then always finds d registered (or not polled),
// never half way.
func (s *Session) startPolled(d *dir) bool {
	p := &thePoller
	if d.src.raw == nil || p.init() != nil {
		return false
	}
	p.mu.Lock()
	var i uint32
	if k := len(p.free); k > 0 {
		i = p.free[k-1]
		p.free = p.free[:k-1]
	} else {
		i = uint32(len(p.slots))
		p.slots = append(p.slots, watch{})
	}
	p.gen++
	if p.gen == wakeToken {
		p.gen++
	}
	p.slots[i] = watch{s: s, d: d, gen: p.gen}
	d.token = uint64(i)<<32 | uint64(p.gen)
	p.n++
	if !p.running {
		p.running = true
		go p.wait()
	}
	p.mu.Unlock()

	// With bytes from before the session, a goroutine forwards them first;
	// otherwise nothing runs until the socket is readable.
	first := evIdle
	if len(d.pre) > 0 {
		first = evRunning
	}
	d.ev.Store(first)
	var cerr error
	err := d.src.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollFlags}
		setToken(&ev, d.token)
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		// Not registered, so no event can come: it is ours alone, and
		// the caller gives it a goroutine.
		d.ev.Store(evNone)
		p.unregister(d)
		d.token = 0
		return false
	}
	if first == evRunning {
		go s.drive(d)
	}
	return true
}

// unregister frees d's slot. It may be called more than once.
func (p *poller) unregister(d *dir) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, gen := uint32(d.token>>32), uint32(d.token)
	if int(i) >= len(p.slots) || p.slots[i].d != d || p.slots[i].gen != gen {
		return
	}
	p.slots[i] = watch{}
	p.free = append(p.free, i)
	p.n--
	if p.n == 0 {
		// Tell the goroutine to look: it returns if nothing came since.
		var b [1]byte
		syscall.Write(p.wake[1], b[:])
	}
}

// wait is the poller's goroutine: it hands readable directions to
// goroutines of their own, and returns when no socket is registered.
func (p *poller) wait() {
	var events [128]syscall.EpollEvent
	ready := make([]watch, 0, len(events))
	for {
		n, err := syscall.EpollWait(p.epfd, events[:], -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			// Only a bad descriptor or buffer fails epoll_wait: a bug.
			panic(fmt.Sprintf("splice: waiting for readiness: %v", err))
		}
		p.mu.Lock()
		for i := range events[:n] {
			t := tokenOf(&events[i])
			if t == wakeToken {
				var b [64]byte
				for {
					if k, _ := syscall.Read(p.wake[0], b[:]); k <= 0 {
						break
					}
				}
				continue
			}
			k, gen := uint32(t>>32), uint32(t)
			// A report fetched before its registration was removed finds
			// the slot empty or reused: it is dropped.
			if int(k) < len(p.slots) && p.slots[k].gen == gen && p.slots[k].d != nil {
				ready = append(ready, p.slots[k])
			}
		}
		if p.n == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		for i, w := range ready {
			w.s.notify(w.d)
			ready[i] = watch{}
		}
		ready = ready[:0]
	}
}

// notify handles a readiness report for d: start a goroutine for it, or tell
// the one running that it must read again before it goes idle.
func (s *Session) notify(d *dir) {
	for {
		switch d.ev.Load() {
		case evIdle:
			if d.ev.CompareAndSwap(evIdle, evRunning) {
				go s.drive(d)
				return
			}
		case evRunning:
			if d.ev.CompareAndSwap(evRunning, evNotified) {
				return
			}
		default: // notified already, or done
			return
		}
	}
}

// drive runs d while its socket has something to read, then re-arms it and
// returns. It owns d until it sets evIdle or evDone.
func (s *Session) drive(d *dir) {
	if len(d.pre) > 0 {
		d.bytes += int64(len(d.pre))
		s.feed(d, d.pre, time.Now())
		d.pre = nil
	}
	for {
		err := s.drain(d)
		if err == nil {
			err = s.arm(d)
		}
		if err != nil {
			s.sourceDone(d, err)
			s.dirDone(d)
			return
		}
		if d.ev.CompareAndSwap(evRunning, evIdle) {
			return // from here on d may run on another goroutine
		}
		// Reported readable while we ran: that report used up the
		// arming, so read again.
		d.ev.Store(evRunning)
	}
}

// arm re-arms d's registration for one more report.
func (s *Session) arm(d *dir) error {
	var cerr error
	err := d.src.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollFlags}
		setToken(&ev, d.token)
		cerr = syscall.EpollCtl(thePoller.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
	})
	if err != nil {
		return err // closed: teardown
	}
	if cerr != nil {
		// ENOENT: teardown removed it meanwhile.
		return fmt.Errorf("re-arming readiness: %w", os.NewSyscallError("epoll_ctl", cerr))
	}
	return nil
}

// deregister removes d's socket from the epoll set, if the connection is
// still open (a closed one left the set when its descriptor was closed).
func (d *dir) deregister() {
	d.src.raw.Control(func(fd uintptr) {
		syscall.EpollCtl(thePoller.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
	thePoller.unregister(d)
}

// dirDone ends d after its source is finished, from d's own goroutine.
func (s *Session) dirDone(d *dir) {
	d.deregister()
	d.ev.Store(evDone)
	s.release()
}

// unwatch is teardown's part for d, before the connections close: d leaves
// the epoll set (so that a descriptor number reused by another socket is not
// reported as ours), and if no goroutine drives it, its reference goes.
// A running goroutine finds the connection closed and ends d itself.
func (s *Session) unwatch(d *dir) {
	if d.token == 0 {
		return // driven by a goroutine of its own
	}
	d.deregister()
	if d.ev.CompareAndSwap(evIdle, evDone) {
		s.release()
	}
}

// drain reads d's source until it would block and feeds what comes, with a
// pooled buffer that it gives back before returning. It returns nil when the
// socket is empty, or the read error (io.EOF at the end of the stream).
func (s *Session) drain(d *dir) error {
	rb := bufPool.Get().(*readBuf)
	defer bufPool.Put(rb)
	buf := rb.b
	if d.readCap > 0 && d.readCap < len(buf) {
		buf = buf[:d.readCap]
	}
	src := d.src
	if src.tls {
		return s.drainTLS(d, buf)
	}
	for {
		n, err := rb.readRaw(src, buf)
		if n > 0 {
			d.bytes += int64(n)
			s.feed(d, buf[:n], time.Now())
		}
		if err == errWouldBlock {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// drainTLS is drain for a TLS source: the first read may block until a whole
// record is there (epoll saw only that the socket is readable), then the
// records crypto/tls holds already are read with a deadline in the past,
// which never touches the socket.
func (s *Session) drainTLS(d *dir, buf []byte) error {
	src := d.src
	poll := false
	for {
		if poll {
			src.conn.SetReadDeadline(aLongTimeAgo)
		}
		n, err := src.conn.Read(buf)
		if poll {
			src.conn.SetReadDeadline(time.Time{})
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
		}
		if n > 0 {
			d.bytes += int64(n)
			s.feed(d, buf[:n], time.Now())
		}
		if err != nil {
			return err
		}
		poll = true
	}
}

// errWouldBlock is readRaw's word for an empty socket.
var errWouldBlock = errors.New("splice: read would block")

// readRaw reads once from p's socket without blocking.
func (rb *readBuf) readRaw(p *peer, buf []byte) (int, error) {
	rb.p = buf
	if err := p.raw.Read(rb.readFn); err != nil {
		return 0, err
	}
	n, errno := rb.n, rb.errno
	rb.p, rb.n, rb.errno = nil, 0, nil
	switch {
	case errno == syscall.EAGAIN:
		return 0, errWouldBlock
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: p.conn.LocalAddr().Network(),
			Source: p.conn.LocalAddr(), Addr: p.conn.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0 && len(buf) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the callback readRaw passes to syscall.RawConn.Read: one
// non-blocking read(2). It returns true whatever happened, so RawConn.Read
// never waits.
func (rb *readBuf) read(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), rb.p)
		if err != syscall.EINTR {
			rb.n, rb.errno = max(n, 0), err
			return true
		}
	}
}
