//go:build linux

package splice

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
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

// Driver states of a direction under the hybrid driver (dir.ev). The zero
// value is for a direction that cannot be parked.
const (
	evNone     int32 = iota // never parked: a goroutine drives it for good
	evIdle                  // parked: registered and armed; no goroutine
	evRunning               // a goroutine drives it
	evNotified              // as evRunning while it parks, and readiness was reported meanwhile
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

// startPolled starts d under the hybrid driver and reports whether it could;
// if not, the caller drives d with a goroutine for good. The session holds a
// reference for d that dirDone or unwatch releases. It is called with s.mu
// held.
func (s *Session) startPolled(d *dir) bool {
	if d.src.raw == nil || thePoller.init() != nil {
		return false
	}
	d.readyFn = d.probeFn()
	d.ev.Store(evRunning)
	go s.drive(d)
	return true
}

// register adds d's socket to the epoll set, armed. It is called with s.mu
// held, before teardown, so that teardown finds d's token as it is.
func (s *Session) register(d *dir) error {
	p := &thePoller
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
		// Not registered, so no event can come.
		p.unregister(d)
		d.token = 0
		return err
	}
	return nil
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
		if err := s.register(d); err != nil {
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
	if d.token != 0 {
		d.deregister()
	}
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
