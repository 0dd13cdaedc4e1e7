//go:build linux

package splice

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The hybrid driver. A direction that has bytes to move runs as on other
// systems: a goroutine of its own waits on Go's netpoller for its source to
// become readable, without a buffer (see pump), and costs nothing more per
// frame. A direction whose source has been quiet for the session's quiet
// period (quietPeriod) lets go of its goroutine and is parked: its source
// socket is armed (EPOLLONESHOT) in one package-level epoll instance, on which
// a single goroutine waits for all parked directions. When a parked socket
// becomes readable, that goroutine starts a goroutine for the direction,
// which runs it as a busy one again until it is quiet once more.
//
// The quiet timer is the source's read deadline, not a timer per read: it is
// set when the goroutine starts and, when it passes, the goroutine looks
// whether the direction read anything since the last time (d.bytes moved);
// if so, the deadline moves on by a quiet period. A busy direction therefore
// pays one deadline change a period, and never an epoll_ctl or a wake-up of
// the poller. A direction parks between one and two quiet periods after its
// last byte. The deadline can also fail a read that follows a readiness
// report; drive treats that like a passed deadline, and nothing is lost: the
// bytes stay in the socket, and crypto/tls keeps a partial record across a
// timeout (it is a temporary error), as pump's TLS polling relies on too.
//
// Why a goroutine per wake-up rather than a fixed pool of workers: a
// direction may block for up to WriteTimeout writing to a slow peer, or in a
// rate-limit wait, and a fixed pool would let a few such sessions hold up all
// others. Goroutines are cheap to start (the runtime reuses their descriptors
// and stacks).
//
// A direction is parked only where it waits for its source, between chunks:
// never in a write to a slow peer or in a rate-limit wait (admit waits in
// the middle of a chunk it has read; letting go of the goroutine there would
// mean keeping the rest of the chunk). Throttled directions therefore cost
// what they cost before; quiet ones cost nothing but their registration.
//
// Go's own netpoller keeps the socket too (it is edge-triggered and sees no
// waiter while the direction is parked, so it stays quiet); registering a
// socket in a second epoll instance is allowed. Every epoll_ctl on a socket
// runs inside syscall.RawConn.Control, which holds the descriptor open, so
// that a concurrent Close cannot free the number for another socket to take
// while we still use it (it would change someone else's registration).
//
// A socket is added to the epoll set the first time its direction parks and
// stays in it, disarmed while the direction runs, until the session ends:
// later parks re-arm it (EPOLL_CTL_MOD). A session that never goes quiet is
// never added.
//
// Inline sessions skip all of that. When both peers are plain sockets and no
// rate limit can make a direction wait (Session.inline), both directions are
// registered edge-triggered for good when the session starts (the backend's
// socket may come registered already, from its wait for the answer to the
// upgrade: see Registration), and the poller's goroutine itself reads each
// readable source into its own buffer and handles the frames, as nginx's
// event loop does: no goroutine, no park and wake-up, and no read that
// meets EAGAIN after each frame (a read that returns less than the buffer
// has emptied the socket, and the next arrival is reported again). Writes
// to the peers never block there: what a peer cannot take at once waits in
// its pending buffer, a goroutine of the session drains it (peer.go), and
// the direction feeding that peer reads nothing more until it is drained
// (evWaiting).
//
// There is one poller per P (GOMAXPROCS at first use), and sessions are
// spread over them in turn, so that inline sessions use every core as
// goroutines would. Each poller's goroutine waits for its epoll instance to
// become readable through Go's own netpoller (an epoll descriptor can be
// polled like a socket), not in a blocking epoll_wait: a thread blocked in a
// system call would make the scheduler hand its P to another thread, and
// every wake-up would cost a thread switch.

// Driver states of a direction under the hybrid driver (dir.ev). The zero
// value is for a direction that cannot be parked.
const (
	evNone     int32 = iota // never parked: a goroutine drives it for good
	evIdle                  // parked: registered and armed; no goroutine
	evRunning               // a goroutine drives it (inline: the poller's goroutine serves it)
	evNotified              // as evRunning while it parks, and readiness was reported meanwhile
	evDone                  // its source is finished; it is driven no more
	evWaiting               // inline: it waits for its destination's pending bytes to drain
	evTorn                  // inline: teardown came while it was served; whoever serves it ends it
	evStarting              // inline: being registered
	evMissed                // inline: being registered, and readiness was reported meanwhile
)

// watch is a registration in the poller: a direction and its session, or
// a socket waiting for the session it will be part of (reg).
type watch struct {
	s      *Session
	d      *dir
	reg    *Registration // instead of s and d: see Register
	gen    uint32        // tells a registration from an earlier one in the same slot
	inline bool          // the poller's goroutine serves d (see Session.serve)
	hup    hangup        // what the report said of the source's end
}

// poller owns the epoll instance and the goroutine waiting on it. The
// goroutine runs while at least one socket is registered; it is started by
// the first registration and returns once none has been registered for
// pollerLinger, so that a process without sessions holds none of its
// goroutines, and one with short sessions (a handshake and a close) does not
// start a goroutine for each. The epoll
// instance and the wake-up pipe, once made, live as long as the process.
type poller struct {
	once    sync.Once
	initErr error
	epfd    int
	file    *os.File        // epfd as Go's netpoller knows it (its finalizer must not run)
	ep      syscall.RawConn // file's, to wait on
	wake    [2]int          // pipe: written to make the goroutine look at n and again

	mu      sync.Mutex
	slots   []watch      // guarded by mu; index = token>>32
	free    []uint32     // guarded by mu; unused slots
	gen     uint32       // guarded by mu; last generation handed out
	n       atomic.Int32 // registered sockets; changed with mu held
	running bool         // guarded by mu; the wait goroutine runs
	// awake: the goroutine is between two waits, and looks at n before
	// the next; lingering: its linger deadline is set (written by the
	// goroutine only). Atomic, so that the goroutine's loop takes no lock
	// for them: the goroutine stores awake then loads n, unregister
	// changes n then loads awake, so at least one of them sees the
	// poller empty.
	awake, lingering atomic.Bool
	again            []watch // guarded by mu; inline directions to serve without a report
	nagain           atomic.Int32
}

// pollers holds one poller per P; next spreads sessions over them.
var pollers struct {
	once sync.Once
	all  []poller
	next atomic.Uint32
}

// pickPoller returns the poller for a new session.
func pickPoller() *poller {
	all := allPollers()
	return &all[pollers.next.Add(1)%uint32(len(all))]
}

// allPollers returns the pollers, made on first use.
func allPollers() []poller {
	pollers.once.Do(func() {
		pollers.all = make([]poller, max(1, min(runtime.GOMAXPROCS(0), 64)))
	})
	return pollers.all
}

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
		err = syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev)
		if err != nil {
			err = fmt.Errorf("splice: registering poller wake-up pipe: %w", err)
		} else if err = syscall.SetNonblock(fd, true); err != nil {
			err = fmt.Errorf("splice: making epoll instance non-blocking: %w", err)
		} else {
			// A non-blocking descriptor given to os.NewFile joins Go's
			// netpoller; the file is kept for the life of the process.
			p.file = os.NewFile(uintptr(fd), "splice-epoll")
			if p.ep, err = p.file.SyscallConn(); err != nil {
				err = fmt.Errorf("splice: polling epoll instance: %w", err)
			}
		}
		if err != nil {
			syscall.Close(fd)
			syscall.Close(p.wake[0])
			syscall.Close(p.wake[1])
			p.initErr = err
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

// inlineFlags: readable or half closed, reported at each arrival
// (edge-triggered) for as long as the socket is registered.
const inlineFlags = syscall.EPOLLIN | syscall.EPOLLRDHUP | -syscall.EPOLLET

// hangupOf says what a report's events tell of the source's end. An error
// (a reset, say) waits behind the bytes queued before it, so a source that
// failed is read until a read returns the error. A FIN, or both directions
// shut down, with no error pending, is different: everything the peer sent
// is queued already, so the first read that does not fill its buffer has
// taken it all and the next could only return the end.
func hangupOf(events uint32) hangup {
	switch {
	case events&syscall.EPOLLERR != 0:
		return hupFailed
	case events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP) != 0:
		return hupFIN
	}
	return hupNone
}

// startPolled starts d under the hybrid driver and reports whether it could;
// if not, the caller drives d with a goroutine for good. The session holds a
// reference for d that dirDone or unwatch releases. It is called with s.mu
// held.
func (s *Session) startPolled(d *dir) bool {
	if d.src.raw == nil || s.pl.init() != nil {
		return false
	}
	d.readyFn = d.probeFn()
	d.ev.Store(evRunning)
	go s.drive(d)
	return true
}

// startInline registers both directions of an inline session with its
// poller, and reports whether it could; if not, the session runs as any
// other. It is called with s.mu held. Each direction holds a reference that
// dirDone, idleDone or unwatch releases.
func (s *Session) startInline() bool {
	if s.pl.init() != nil {
		return false
	}
	// Reports that come before both are registered only mark the
	// direction (evMissed); it is served once the session is fully in.
	// A backend socket registered while it waited for its answer is
	// taken over as it is: same flags, same slot, no epoll_ctl.
	again := false
	if r := s.reg; r != nil {
		s.reg = nil
		s.b2c.ev.Store(evStarting)
		if !s.pl.adopt(r, s, &s.b2c, &again) {
			r.Release()
		}
	}
	for _, d := range []*dir{&s.b2c, &s.c2b} {
		if d.token != 0 {
			continue // adopted
		}
		d.ev.Store(evStarting)
		if err := s.register(d, inlineFlags); err != nil {
			if s.b2c.token != 0 {
				s.b2c.deregister(s.pl)
				s.b2c.token = 0
			}
			s.b2c.ev.Store(evNone)
			s.c2b.ev.Store(evNone)
			return false
		}
	}
	s.refs.Add(2)
	if testHookRegistered != nil {
		testHookRegistered()
	}
	for _, d := range []*dir{&s.b2c, &s.c2b} {
		if !d.ev.CompareAndSwap(evStarting, evIdle) || len(d.pre) > 0 || (again && d == &s.b2c) {
			d.ev.Store(evIdle)
			s.pl.requeue(watch{s: s, d: d, gen: uint32(d.token), inline: true})
		}
	}
	return true
}

// testHookRegistered, when set by a test, runs in startInline between the
// registrations and the directions' going idle.
var testHookRegistered func()

// register adds d's socket to the epoll set, armed with flags. It is called
// with s.mu held, before teardown, so that teardown finds d's token as it is.
func (s *Session) register(d *dir, flags uint32) error {
	p := s.pl
	d.token = p.add(watch{s: s, d: d, inline: flags == inlineFlags})
	err := epollCtl(d.src.raw, p.epfd, syscall.EPOLL_CTL_ADD, flags, d.token)
	if err != nil {
		// Not registered, so no event can come.
		p.unregister(d)
		d.token = 0
		return err
	}
	return nil
}

// add gives w a slot, starting the poller's goroutine if it is not
// running, and returns w's token.
func (p *poller) add(w watch) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
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
	w.gen = p.gen
	p.slots[i] = w
	p.n.Add(1)
	if !p.running {
		p.running = true
		go p.wait()
	}
	return uint64(i)<<32 | uint64(p.gen)
}

// unregister frees d's slot. It may be called more than once.
func (p *poller) unregister(d *dir) { p.remove(d.token, d, nil) }

// remove frees slot t if d and r still hold it.
func (p *poller) remove(t uint64, d *dir, r *Registration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, gen := uint32(t>>32), uint32(t)
	if int(i) >= len(p.slots) || p.slots[i].d != d || p.slots[i].reg != r || p.slots[i].gen != gen {
		return
	}
	p.slots[i] = watch{}
	p.free = append(p.free, i)
	if p.n.Add(-1) == 0 && p.running && !p.awake.Load() && !p.lingering.Load() {
		// Removed by another goroutine (a timer's teardown) while the
		// poller waits without a deadline: it must look, and linger.
		p.poke()
	}
}

// lookup returns the registration of token t. A report fetched (or a
// direction queued) before its registration was removed finds the slot
// empty or reused: it is dropped. It is called with p.mu held.
func (p *poller) lookup(t uint64) (watch, bool) {
	k, gen := uint32(t>>32), uint32(t)
	if t == 0 || int(k) >= len(p.slots) || p.slots[k].gen != gen || (p.slots[k].d == nil && p.slots[k].reg == nil) {
		return watch{}, false
	}
	return p.slots[k], true
}

// requeue has the poller's goroutine serve inline direction w.d as if its
// source had been reported readable: for bytes read before the session
// began, after a wait for its destination, or after a turn cut short.
func (p *poller) requeue(w watch) {
	p.mu.Lock()
	p.again = append(p.again, w)
	p.nagain.Store(int32(len(p.again)))
	p.mu.Unlock()
	p.poke()
}

// poke makes the poller's goroutine look again, through its wake-up pipe.
// The pipe is non-blocking, so its calls are raw ones (see sockio): a full
// pipe has a wake-up pending already.
func (p *poller) poke() {
	var b [1]byte
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(p.wake[1]), uintptr(unsafe.Pointer(&b[0])), 1)
}

// drainWake empties the wake-up pipe.
func (p *poller) drainWake() {
	var b [64]byte
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(p.wake[0]), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 || r == 0 {
			return
		}
	}
}

// epollWait fetches the reports waiting in p's epoll instance, without
// blocking. It returns 0 and nil when there are none.
func (p *poller) epollWait(fd uintptr, events []syscall.EpollEvent) (int, error) {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&events[0])),
			uintptr(len(events)), 0, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		default:
			return 0, e
		}
	}
}

// pollerLinger is how long a poller's goroutine outlives its last
// registration; tests shorten it (nanoseconds, 0 for defaultLinger).
var pollerLinger atomic.Int64

const defaultLinger = 2 * time.Second

func lingerFor() time.Duration {
	if d := pollerLinger.Load(); d > 0 {
		return time.Duration(d)
	}
	return defaultLinger
}

// wait is the poller's goroutine: it serves readable inline directions
// itself, hands the others to goroutines of their own, and returns when no
// socket has been registered for pollerLinger. The linger is a read
// deadline on the epoll file, set when the poller is found empty before a
// wait, and cleared only when it fires: at most two deadline changes per
// linger period, however many sessions come and go.
func (p *poller) wait() {
	var events [128]syscall.EpollEvent
	ready := make([]watch, 0, len(events))
	var buf *[]byte  // the inline directions' read buffer, while this goroutine runs
	rd := newRawIO() // and the state of their reads
	defer func() {
		if buf != nil {
			bufPool.Put(buf)
		}
	}()
	var n int
	var err error
	fetch := func(fd uintptr) bool {
		n, err = p.epollWait(fd, events[:])
		return n > 0 || err != nil || p.nagain.Load() > 0
	}
	fetchNow := func(fd uintptr) { fetch(fd) }
	for {
		p.awake.Store(false)
		if !p.lingering.Load() && p.n.Load() == 0 {
			p.file.SetReadDeadline(time.Now().Add(lingerFor()))
			p.lingering.Store(true)
		}
		n, err = 0, nil
		expired := false
		// Wait on Go's netpoller, unless directions are queued already.
		if p.nagain.Load() > 0 {
			p.ep.Control(fetchNow)
		} else if werr := p.ep.Read(fetch); errors.Is(werr, os.ErrDeadlineExceeded) {
			expired = true
		} else if werr != nil && err == nil {
			err = werr
		}
		if err != nil {
			// Only a bad descriptor or buffer fails epoll_wait: a bug.
			panic(fmt.Sprintf("splice: waiting for readiness: %v", err))
		}
		p.awake.Store(true)
		p.mu.Lock()
		for i := range events[:n] {
			t := tokenOf(&events[i])
			if t == wakeToken {
				p.drainWake()
				continue
			}
			if w, ok := p.lookup(t); ok {
				hup := hangupOf(events[i].Events)
				if w.reg != nil {
					w.reg.signal(hup)
					continue
				}
				w.hup = hup
				ready = append(ready, w)
			}
		}
		for _, w := range p.again {
			if _, ok := p.lookup(w.d.token); ok && uint32(w.d.token) == w.gen {
				ready = append(ready, w)
			}
		}
		clear(p.again)
		p.again = p.again[:0]
		p.nagain.Store(0)
		if expired {
			// Cleared before the next goroutine can start, or because
			// sockets came again.
			p.file.SetReadDeadline(time.Time{})
			p.lingering.Store(false)
			if p.n.Load() == 0 {
				p.running = false
				p.mu.Unlock()
				return
			}
		}
		p.mu.Unlock()
		// One clock reading for the batch: what it dates (activity, for
		// idle timeouts) needs no finer grain than a batch takes.
		var now time.Time
		if len(ready) > 0 {
			now = time.Now()
		}
		for i, w := range ready {
			if w.inline {
				if buf == nil {
					buf = bufPool.Get().(*[]byte)
				}
				if w.s.serve(w.d, *buf, w.hup, now, rd) {
					p.requeue(w)
				}
			} else {
				w.s.notify(w.d)
			}
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

// drive runs d on the calling goroutine while its source is busy: it waits
// for readability on Go's netpoller (pump) with the quiet deadline set. When
// the source has been quiet for a quiet period, drive parks d and returns;
// when the source is done, it ends d. It owns d until it sets evIdle or
// evDone.
func (s *Session) drive(d *dir) {
	if len(d.pre) > 0 {
		d.bytes.Add(int64(len(d.pre)))
		s.feed(d, d.pre, time.Now())
		d.pre = nil
	}
	s.setQuiet(d, time.Now())
	for {
		err := s.pump(d)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			var parked bool
			if parked, err = s.settle(d); parked {
				return // from here on d may run on another goroutine
			}
			if err == nil {
				continue
			}
		}
		s.sourceDone(d, err)
		s.dirDone(d)
		return
	}
}

// setQuiet starts a quiet period for d at now: the read deadline is its end.
func (s *Session) setQuiet(d *dir, now time.Time) {
	d.seen = d.bytes.Load()
	at := now.Add(s.quiet)
	d.rdl = int64(at.Sub(s.start))
	d.src.conn.SetReadDeadline(at)
}

// settle runs when d's quiet deadline has passed. If bytes came since the
// last look, or wait in the socket (d was held up in a write or a limiter
// wait, not quiet), d keeps its goroutine for another period. Otherwise it
// parks. It returns an error when d cannot go on: the session is ending.
func (s *Session) settle(d *dir) (parked bool, err error) {
	if d.bytes.Load() != d.seen || s.readable(d) {
		s.setQuiet(d, time.Now())
		return false, nil
	}
	return s.park(d)
}

// readable reports whether d's source socket has something to read (or an
// error, or the end of the stream) without reading it. A closed connection
// counts as readable: the read that follows reports it.
func (s *Session) readable(d *dir) bool {
	r := true
	d.src.raw.Control(func(fd uintptr) { r = d.ready(fd) })
	return r
}

// park arms d's registration and lets go of d, unless readiness was
// reported while it armed: then d goes on running (the report used up the
// arming). It is done under s.mu, so that it comes either wholly before
// teardown (which then finds d registered or not, never half way) or not at
// all: once the session is torn, d ends instead.
func (s *Session) park(d *dir) (parked bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.torn {
		return false, net.ErrClosed // teardown closes the connections
	}
	if d.token == 0 {
		if err := s.register(d, pollFlags); err != nil {
			// The socket cannot be polled: d keeps its goroutine for
			// good, and needs no quiet deadline any more.
			d.ev.Store(evNone)
			d.rdl = 0
			d.src.conn.SetReadDeadline(time.Time{})
			return false, nil
		}
	} else if err := s.arm(d); err != nil {
		return false, err
	}
	if d.ev.CompareAndSwap(evRunning, evIdle) {
		return true, nil
	}
	d.ev.Store(evRunning)
	s.setQuiet(d, time.Now())
	return false, nil
}

// arm re-arms d's registration for one more report.
func (s *Session) arm(d *dir) error {
	err := epollCtl(d.src.raw, s.pl.epfd, syscall.EPOLL_CTL_MOD, pollFlags, d.token)
	var errno syscall.Errno
	if errors.As(err, &errno) {
		// ENOENT: teardown removed it meanwhile.
		return fmt.Errorf("re-arming readiness: %w", os.NewSyscallError("epoll_ctl", errno))
	}
	return err // nil, or closed: teardown
}

// deregister removes d's socket from the epoll set, if the connection is
// still open (a closed one left the set when its descriptor was closed).
func (d *dir) deregister(p *poller) {
	epollCtl(d.src.raw, p.epfd, syscall.EPOLL_CTL_DEL, 0, 0)
	p.unregister(d)
}

// epollOp is one epoll_ctl on a socket, made inside RawConn.Control (see
// the top of this file). Its callback is bound once and ops are pooled, so
// that a session's registrations allocate nothing.
type epollOp struct {
	epfd, op int
	ev       syscall.EpollEvent
	errno    syscall.Errno
	fn       func(fd uintptr)
}

var epollOps = sync.Pool{New: func() any {
	o := new(epollOp)
	o.fn = o.ctl
	return o
}}

func (o *epollOp) ctl(fd uintptr) {
	_, _, o.errno = syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(o.epfd), uintptr(o.op), fd,
		uintptr(unsafe.Pointer(&o.ev)), 0, 0)
}

// epollCtl makes epoll_ctl(epfd, op) for the socket of rc with events and
// token. It returns RawConn's error when the connection is closed, else the
// syscall's errno (a syscall.Errno), or nil.
func epollCtl(rc syscall.RawConn, epfd, op int, events uint32, token uint64) error {
	o := epollOps.Get().(*epollOp)
	o.epfd, o.op, o.ev, o.errno = epfd, op, syscall.EpollEvent{Events: events}, 0
	setToken(&o.ev, token)
	err := rc.Control(o.fn)
	errno := o.errno
	epollOps.Put(o)
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// dirDone ends d after its source is finished, from whoever drives d.
func (s *Session) dirDone(d *dir) {
	if d.token != 0 {
		d.deregister(s.pl)
	}
	d.ev.Store(evDone)
	s.release()
}

// unwatch is teardown's part for d, before the connections close: d's
// registration is dropped, and if nobody drives it, its reference goes. A
// running goroutine finds the connection closed and ends d itself; the
// poller's goroutine serving an inline d finds evTorn when it is done with
// it.
//
// The socket is not taken out of the epoll set: closing it does that (epoll
// forgets a file when it is released, and keys its entries by file, so a
// descriptor number reused by another socket is not confused with it). A
// report already fetched, or one from a file that some other descriptor
// keeps open, carries a token whose slot is now empty or reused, and is
// dropped. That saves an epoll_ctl per socket per session.
func (s *Session) unwatch(d *dir) {
	if d.token == 0 {
		return // driven by a goroutine of its own
	}
	s.pl.unregister(d)
	for {
		switch st := d.ev.Load(); st {
		case evIdle, evWaiting:
			if d.ev.CompareAndSwap(st, evDone) {
				s.release()
				return
			}
		case evRunning:
			if !s.inline || d.ev.CompareAndSwap(evRunning, evTorn) {
				return
			}
		default:
			return
		}
	}
}

// serve handles an inline direction on the poller's goroutine: it reads
// what d's source holds into buf and handles it, never blocking. A read that
// does not fill buf has emptied the socket (edge-triggered epoll reports the
// next arrival). After a FIN (hupFIN) that read also ends the direction;
// after an error (hupFailed) the source is read until a read returns it.
// serve stops early when d's destination has bytes pending (d then
// waits for them; see waitDst) and after maxTurns full buffers, reporting
// that d should be served again after the others.
func (s *Session) serve(d *dir, buf []byte, hup hangup, now time.Time, rd *rawIO) (again bool) {
	if s.lim != nil {
		now = time.Now() // a rate limit wants the time of each read
	}
	// A hang-up is remembered even when the report is not acted on now:
	// the serve that follows a wait or the start reads to the end.
	d.hup = max(d.hup, hup)
	for started := false; !started; {
		switch st := d.ev.Load(); st {
		case evIdle:
			started = d.ev.CompareAndSwap(evIdle, evRunning)
		case evStarting:
			if d.ev.CompareAndSwap(evStarting, evMissed) {
				return false // startInline serves it
			}
		default:
			return false // done, or waiting for its destination
		}
	}
	if d.readCap > 0 && d.readCap < len(buf) {
		buf = buf[:d.readCap]
	}
	if len(d.pre) > 0 {
		d.bytes.Add(int64(len(d.pre)))
		s.feed(d, d.pre, now)
		d.pre = nil
		if s.waitDst(d) {
			return false
		}
	}
	for turn := 1; ; turn++ {
		n, err := d.readNow(buf, rd)
		if n > 0 {
			d.bytes.Add(int64(n))
			if s.lim != nil && turn > 1 {
				now = time.Now()
			}
			s.feed(d, buf[:n], now)
		}
		if err != nil && err != errWouldBlock {
			s.sourceDone(d, err)
			s.dirDone(d)
			return false
		}
		if s.waitDst(d) {
			return false
		}
		if err == errWouldBlock || (n < len(buf) && d.hup == hupNone) {
			break
		}
		if d.ev.Load() == evTorn {
			// What was read ended the session (a close frame answered,
			// say): its sockets are closed, and a hung-up source need
			// not be read to its end.
			break
		}
		if n < len(buf) && d.hup == hupFIN {
			// The FIN was queued before this read, which took all
			// that came before it (see hangupOf): the source is at its
			// end, and one read fewer finds it.
			s.sourceDone(d, io.EOF)
			s.dirDone(d)
			return false
		}
		if turn == maxTurns {
			again = true
			break
		}
	}
	if !d.ev.CompareAndSwap(evRunning, evIdle) {
		// Torn down meanwhile: unwatch left d's end to us.
		d.ev.Store(evDone)
		s.release()
		return false
	}
	return again
}

// maxTurns is how many full buffers serve reads from one source before it
// lets the poller's other directions have theirs.
const maxTurns = 4

// waitDst reports whether inline direction d must wait before it reads
// again, because its destination has bytes pending: then d is the
// destination's waiter, to be served again (resume) once they are drained.
func (s *Session) waitDst(d *dir) bool {
	p := d.dst
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.pend == nil || !d.ev.CompareAndSwap(evRunning, evWaiting) {
		return false // nothing pending, or torn down: serve ends d
	}
	p.waiter = d
	return true
}

// resume serves d again after its wait for its destination.
func (s *Session) resume(d *dir) {
	if d.ev.CompareAndSwap(evWaiting, evIdle) {
		s.pl.requeue(watch{s: s, d: d, gen: uint32(d.token), inline: true})
	}
}
