//go:build linux

package splice

import (
	"net"
	"syscall"
	"time"
)

// Registration is a backend socket registered with a poller before its
// session exists, so that the wait for the backend's answer to the upgrade
// happens in the poller's epoll set rather than in Go's netpoller, and the
// session then takes the registration over (Options.Backend) without
// another epoll_ctl. The socket never joins Go's netpoller: no os.File, no
// registration there and none to undo at close (see rawtcp.Conn). That
// saves four of the 27 system calls a WebSocket handshake session made
// (bench/README.md).
//
// The registration has the flags of an inline direction (edge-triggered,
// readable or half closed). While it waits for its session the poller does
// not serve it: each report only wakes Wait, through ready. One that comes
// when nobody waits is kept there, so that the session serves the socket
// at once rather than wait for a report that already came.
type Registration struct {
	p     *poller
	rc    syscall.RawConn
	token uint64
	ready chan struct{} // one pending report at most
	// unread: the last read filled its buffer, so the socket may hold
	// more, which no report will announce (edge-triggered).
	unread bool
	hup    hangup // what the reports said of the socket's end; guarded by p.mu
}

// Register registers the socket of c, a plain TCP connection, with a
// poller. It returns nil when it cannot (not a socket the poller can
// watch, or no epoll here); the caller then waits as usual. A Registration
// must end either in a Session (Options.Backend) or in Release.
func Register(c net.Conn) *Registration {
	rc := rawConnOf(c)
	if rc == nil {
		return nil
	}
	p := pickPoller()
	if p.init() != nil {
		return nil
	}
	r := &Registration{p: p, rc: rc, ready: make(chan struct{}, 1)}
	r.token = p.add(watch{reg: r})
	if err := epollCtl(rc, p.epfd, syscall.EPOLL_CTL_ADD, inlineFlags, r.token); err != nil {
		p.remove(r.token, nil, r)
		return nil
	}
	return r
}

// Wait returns once the socket may have become readable since the last
// read that found it empty (or hung up, or failed), or once deadline, if
// not zero, has passed. It is the connection's read wait while the upgrade
// exchange runs (rawtcp.Conn.SetReadWait).
func (r *Registration) Wait(deadline time.Time) {
	if deadline.IsZero() {
		<-r.ready
		return
	}
	d := time.Until(deadline)
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	select {
	case <-r.ready:
	case <-t.C:
	}
	t.Stop()
}

// SetUnread records whether the last read of the socket filled its
// buffer: then the session must read the socket before it waits for a
// report.
func (r *Registration) SetUnread(maybe bool) { r.unread = maybe }

// signal passes a report on to Wait. It is called with p.mu held.
func (r *Registration) signal(hup hangup) {
	r.hup = max(r.hup, hup)
	select {
	case r.ready <- struct{}{}:
	default: // one is pending already
	}
}

// Release takes the socket out of the poller's epoll set and frees its
// slot, for a connection that does not become a session's (a refusal, a
// failure) or becomes one that cannot take the registration over. The
// connection may be closed already. Release may be called on nil, and
// more than once.
func (r *Registration) Release() {
	if r == nil || r.p == nil {
		return
	}
	// A closed connection left the set when it closed (and Control then
	// fails without touching the descriptor number).
	epollCtl(r.rc, r.p.epfd, syscall.EPOLL_CTL_DEL, 0, 0)
	r.p.remove(r.token, nil, r)
	r.p = nil
}

// pollerOf returns the poller r is registered with, nil once it is not.
func (r *Registration) pollerOf() *poller {
	if r == nil {
		return nil
	}
	return r.p
}

// adopt hands r's slot over to inline direction d of s, whose source is
// r's socket, and reports whether it could (r was not released). again
// says d must be served before any report: one came while nobody waited,
// or the last read left bytes unread. It is called with s.mu held, before
// d can be served.
func (p *poller) adopt(r *Registration, s *Session, d *dir, again *bool) bool {
	if r.p != p {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	i, gen := uint32(r.token>>32), uint32(r.token)
	if int(i) >= len(p.slots) || p.slots[i].reg != r || p.slots[i].gen != gen {
		return false
	}
	p.slots[i] = watch{s: s, d: d, gen: gen, inline: true}
	d.token = r.token
	// A hang-up reported already will not be again: d reads to the end.
	d.hup = max(d.hup, r.hup)
	r.p = nil
	*again = len(r.ready) > 0 || r.unread
	return true
}

// Registered returns how many sockets the pollers hold: the parked or
// inline directions of sessions, and the backend sockets waiting for their
// answers (Register). It is for tests and diagnostics.
func Registered() int {
	n := 0
	all := allPollers()
	for i := range all {
		n += int(all[i].n.Load())
	}
	return n
}
