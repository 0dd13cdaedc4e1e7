// Package splice relays WebSocket frames between a client and a backend after
// the HTTP/1.1 upgrade handshake is done. It knows nothing of HTTP: it is
// handed two connections (and whatever bytes were read past the handshake)
// and splices them frame by frame, without decoding payloads. Masking and
// compression bits pass through as they came, so a valid stream comes out
// byte for byte. On the way it enforces the protocol rules of RFC 6455 (and
// RFC 7692 for RSV1), the per-connection limits of the route, idle and ping
// timers, and the close handshake on both sides.
//
// Memory is the design constraint, and busy sessions must not pay for it. On
// Linux a session between two plain sockets that no throttle can make wait
// runs inline: an event loop per P (poll_linux.go) reads each readable
// source into its own buffer, handles the frames and writes them on without
// waiting, so the session never has a goroutine or a buffer of its own. In
// other sessions (TLS, throttling) a direction with traffic has a goroutine
// that waits for its source socket to become readable without holding a
// buffer, then borrows one from a pool, handles every frame in what arrived,
// writes it on and gives the buffer back; on Linux a direction quiet for a
// second gives up its goroutine too, its socket waiting in the same epoll
// instances, and the goroutine comes back when it is readable. An idle
// session then holds no goroutine and no buffer. The per-direction parser state lives in a
// small struct (see dir), not on a goroutine stack, which is what makes this
// possible. Timers (idle, ping, close grace) are time.AfterFunc timers, which
// hold no goroutine while they wait. Elsewhere, and for connections that are
// not sockets, each direction keeps its goroutine.
package splice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/sluice-proxy/sluice/ratelimit"
)

// DefaultWriteTimeout bounds one write to either peer when
// Options.WriteTimeout is zero. A peer that stops reading cannot pin a session
// longer than this.
const DefaultWriteTimeout = 30 * time.Second

// closeGrace is how long the session waits for the close handshake to finish
// once a close frame was sent or received, or one side went away.
const closeGrace = time.Second

// quietPeriod is how long a direction's source may stay without bytes before
// the direction lets go of its goroutine and parks (on Linux; see
// poll_linux.go). A park and the wake-up that follows cost a few microseconds
// (an epoll_ctl, a poller wake-up, a goroutine start, a deadline change),
// against the few KiB of a goroutine that waits. With a second, a direction
// parks at most once a second, so even one that sends just too rarely to stay
// on its goroutine spends a negligible share of a core on parking, and any
// stream of a message a second or more never parks; a session quiet for
// longer (most sessions, between the heartbeats of typical applications)
// holds no goroutine. Much shorter periods would make low-rate streams park
// and wake for every message; much longer ones keep goroutines of sessions
// that have gone quiet.
const quietPeriod = time.Second

// hurryWriteTimeout bounds the courtesy close frames written when Run's
// context ends.
const hurryWriteTimeout = 100 * time.Millisecond

// Options are the limits and timers of one session. The zero value splices
// with no limits, no timers and no extensions.
type Options struct {
	// MessagesPerSecond limits client-to-backend data messages (counted at
	// their first frame, not per fragment). 0 = unlimited.
	MessagesPerSecond float64
	// MessageBurst is how many messages may pass at once. 0 = the rate
	// rounded up, at least 1.
	MessageBurst int
	// BytesPerSecond limits client-to-backend data payload bytes (headers
	// and control frames are not charged). The burst is one second's worth.
	// 0 = unlimited.
	BytesPerSecond int64
	// MaxMessageSize is the largest client-to-backend message in payload
	// bytes, summed over its fragments (as sent: compressed if RSV1). A larger
	// one closes the session with 1009 to the client. 0 = unlimited.
	MaxMessageSize int64
	// CloseOnLimit chooses what a rate limit does. false (throttle): stop
	// reading from the client until tokens are there, so TCP pushes back and
	// nothing is lost. true: close with 1008 to the client and 1001 to the
	// backend.
	CloseOnLimit bool
	// IdleTimeout closes the session (1001 both ways) when no frame has been
	// forwarded either way for this long. The proxy's own pings and the pongs
	// it swallows do not count as traffic. 0 = never.
	IdleTimeout time.Duration
	// PingInterval makes the proxy ping the client this often. The pongs that
	// answer those pings are not forwarded. A client that has not answered a
	// ping an interval after it went out, and meanwhile neither sent bytes
	// nor acknowledged any (it may be busy sending or reading one long
	// frame), is closed (1001 both ways). 0 = no pings.
	PingInterval time.Duration
	// AllowRSV1 says permessage-deflate was negotiated: RSV1 may be set on
	// the first frame of a data message. Otherwise any RSV bit is a protocol
	// error.
	AllowRSV1 bool
	// WriteTimeout bounds each write to either peer. 0 = DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Backend is the backend socket's Registration, when it has one
	// (Register): New takes it over, and the session keeps it or
	// releases it.
	Backend *Registration
}

// Stats describes a finished session. In means client to backend, Out backend
// to client.
type Stats struct {
	Duration time.Duration
	// FramesIn and FramesOut count frame headers read from the client and
	// from the backend; BytesIn and BytesOut count the bytes read from them,
	// headers included, buffered bytes handed to New included.
	FramesIn, FramesOut int64
	BytesIn, BytesOut   int64
	// ClientCloseCode and BackendCloseCode are the codes of the close frames
	// each side sent: 0 = none seen, 1005 = a close frame without a code.
	ClientCloseCode, BackendCloseCode int
	// ClosedBy says who ended the session first: "client", "backend" or
	// "proxy".
	ClosedBy string
	// Reason is a short word for why the session ended: "" for a close
	// handshake started by a peer, else "client_gone", "backend_gone",
	// "protocol_error", "max_message_size", "rate_limit", "idle_timeout",
	// "ping_timeout", "shutdown" or "canceled".
	Reason string
	// LimitHits counts throttle waits and limit closes.
	LimitHits int64
	// Err is what went wrong: a protocol violation or an I/O error. It is nil
	// for close handshakes, EOF, limits, timers and shutdown.
	Err error
}

// side names one end of the session.
type side uint8

const (
	sideClient side = iota
	sideBackend
)

func (s side) String() string {
	if s == sideClient {
		return "client"
	}
	return "backend"
}

// cause is why the session ends; its word is Stats.Reason and the reason
// text of the close frames the proxy sends.
type cause uint8

const (
	causeNone cause = iota
	causeClientGone
	causeBackendGone
	causeProtocol
	causeSize
	causeRate
	causeIdle
	causePing
	causeShutdown
	causeCanceled
)

var causeWords = [...]string{"", "client_gone", "backend_gone", "protocol_error", "max_message_size",
	"rate_limit", "idle_timeout", "ping_timeout", "shutdown", "canceled"}

func (c cause) String() string { return causeWords[c] }

// goneCause is the cause when peer x vanishes.
func goneCause(x side) cause {
	if x == sideClient {
		return causeClientGone
	}
	return causeBackendGone
}

// goneCode is the close code sent to peer x when the other peer vanishes:
// 1014 (bad gateway) to the client, 1001 (going away) to the backend.
func goneCode(x side) ws.StatusCode {
	if x == sideClient {
		return 1014
	}
	return ws.StatusGoingAway
}

var errRunTwice = errors.New("splice: Run called twice")

// Session splices one WebSocket connection. Create it with New, then either
// Run it (blocking) or Start it (not blocking, with a callback when it is
// over); Shutdown may be called from any goroutine at any time.
type Session struct {
	opt Options
	lim *ratelimit.Stream // nil: no rate limits

	client, backend peer
	c2b, b2c        dir

	pl         *poller       // the poller of its sockets (Linux)
	reg        *Registration // the backend's, until startInline takes it over
	inline     bool          // both directions run on the poller's goroutine, and writes never block (see poll_linux.go)
	start      time.Time
	quiet      time.Duration // a direction parks after this long without bytes: quietPeriod (tests shorten it)
	lastActive atomic.Int64  // nanoseconds since start of the last forwarded write
	closing    atomic.Bool   // a close is under way: limits no longer apply
	hurry      atomic.Bool   // Run's context ended: writes get hurryWriteTimeout
	pingSeq    atomic.Uint32
	pingSent   atomic.Uint32 // sequence number of the last ping written
	pongGot    atomic.Uint32 // sequence number of the last ping answered
	pingAt     atomic.Int64  // nanoseconds since start when the last ping was written
	pingFrom   atomic.Int64  // bytes read from the client when the last ping was written, or at the last tick after
	pingAcked  atomic.Int64  // bytes the client had acknowledged then (ackedBytes)
	// graceAt: bytes read both ways when onGrace last looked (it alone
	// touches it). One sum for both directions, not a count in each: the
	// Session must stay within 1016 bytes, its size class with the
	// allocator's header, or each idle session costs 128 bytes more.
	graceAt int64

	ctx    context.Context    // limiter waits use it; with lim only
	cancel context.CancelFunc // ends ctx at teardown; with lim only

	mu          sync.Mutex
	running     bool        // guarded by mu
	shutdownReq bool        // guarded by mu
	torn        bool        // guarded by mu
	done        func(Stats) // guarded by mu; Start's callback, called by finish
	// hs tracks each peer's close handshake: a close frame came from it
	// (or it is gone) and one went to it (or cannot).
	hs       [2]struct{ from, to bool } // guarded by mu
	closedBy string                     // guarded by mu
	cause    cause                      // guarded by mu
	err      error                      // guarded by mu
	// Timers and the context hook. Each armed one holds a reference that
	// its callback releases, or teardown when it stops it first.
	idle, ping, grace *time.Timer // guarded by mu
	stopCtx           func() bool // guarded by mu
	// refs counts what the session must wait for before it is over:
	// teardown (one, released when both connections are closed), each
	// direction until it is driven no more, each armed timer and each
	// helper goroutine. Whoever releases the last one calls finish. No new
	// reference is taken once teardown has begun, except by holders of one.
	refs atomic.Int32
}

// New returns a session that will splice client and backend.
//
// clientBuffered and backendBuffered are bytes already read past the
// handshake from each connection (by a bufio.Reader, typically). They are
// frames and are forwarded first. New keeps the slices without copying; the
// caller must not change them until Run returns.
//
// The session owns both connections from now on: Run or Start closes them.
// If neither is called they stay the caller's to close.
func New(client net.Conn, clientBuffered []byte, backend net.Conn, backendBuffered []byte, opt Options) *Session {
	if opt.WriteTimeout <= 0 {
		opt.WriteTimeout = DefaultWriteTimeout
	}
	s := &Session{opt: opt, quiet: quietPeriod}
	if opt.MessagesPerSecond > 0 || opt.BytesPerSecond > 0 {
		s.lim = ratelimit.NewStream(ratelimit.StreamLimits{
			MessagesPerSecond: opt.MessagesPerSecond,
			MessageBurst:      opt.MessageBurst,
			BytesPerSecond:    opt.BytesPerSecond,
		})
	}
	s.client.init(client, sideClient)
	s.backend.init(backend, sideBackend)
	ext := ws.State(0)
	if opt.AllowRSV1 {
		ext = ws.StateExtended
	}
	// Toward the client the proxy is the server, so the client's frames are
	// checked as a server checks them; toward the backend it is the client.
	s.c2b.init(&s.client, &s.backend, clientBuffered, ws.StateServerSide|ext)
	s.b2c.init(&s.backend, &s.client, backendBuffered, ws.StateClientSide|ext)
	if s.pl = opt.Backend.pollerOf(); s.pl == nil {
		s.pl = pickPoller()
	}
	// Inline needs both sockets read and written by the poller's goroutine,
	// which must never wait: not for crypto/tls, nor for a rate limit.
	s.inline = canInline && s.client.raw != nil && s.backend.raw != nil &&
		!s.client.tls && !s.backend.tls && (s.lim == nil || opt.CloseOnLimit)
	if s.inline {
		s.reg, s.opt.Backend = opt.Backend, nil
	} else {
		// The other drivers register the socket their own way.
		opt.Backend.Release()
		s.opt.Backend = nil
	}
	if b := s.lim.ByteBurst(); b > 0 {
		// Read no more than the byte bucket can ever pay for at once: a
		// throttled client is then held back by TCP, not by our buffer.
		s.c2b.readCap = int(min(b, bufSize))
	}
	return s
}

// WouldInline reports whether a session between client and a plain TCP
// backend would run inline with opt: the only kind that takes a backend's
// Registration over.
func WouldInline(client net.Conn, opt Options) bool {
	var p peer
	p.init(client, sideClient)
	limited := opt.MessagesPerSecond > 0 || opt.BytesPerSecond > 0
	return canInline && p.raw != nil && !p.tls && (!limited || opt.CloseOnLimit)
}

// Run splices until the session is over and returns what happened. When it
// returns, both connections are closed and every goroutine it started has
// returned. Ending ctx ends the session abruptly: close frames with 1001 go
// to both peers if they can be written at once, then the connections close.
// A session may be run once, by Run or Start.
func (s *Session) Run(ctx context.Context) Stats {
	c := make(chan Stats, 1)
	s.Start(ctx, func(st Stats) { c <- st })
	return <-c
}

// Start starts the session and returns at once. done is called exactly once,
// when the session is over: both connections are closed, no timer of the
// session is pending and every goroutine it started has returned or is
// returning (done runs on the last of them, and nothing of the session runs
// after it). done should not block for long: it runs on a goroutine of the
// session. ctx is as for Run. Called on a session already started, Start
// calls done at once, on the caller's goroutine, with an error in Stats.Err.
//
// Ownership: from Start on, the session owns both connections and closes
// them; the caller must not read, write or close them, nor change the
// buffered slices given to New, until done has been called.
func (s *Session) Start(ctx context.Context, done func(Stats)) {
	s.mu.Lock()
	if s.running || s.torn {
		s.reg.Release()
		s.reg = nil
		s.mu.Unlock()
		done(Stats{Err: errRunTwice})
		return
	}
	s.running = true
	s.done = done
	s.start = time.Now()
	s.refs.Add(1) // teardown's
	if s.lim != nil {
		s.ctx, s.cancel = context.WithCancel(ctx)
	}
	if ctx.Done() != nil {
		s.refs.Add(1)
		s.stopCtx = context.AfterFunc(ctx, s.onCancel)
	}
	if d := s.opt.IdleTimeout; d > 0 {
		s.refs.Add(1)
		s.idle = time.AfterFunc(d, s.onIdle)
	}
	if d := s.opt.PingInterval; d > 0 {
		s.refs.Add(1)
		s.ping = time.AfterFunc(d, s.onPing)
	}
	if s.shutdownReq {
		s.spawnShutdownLocked()
	}
	// The directions start under mu, so that a teardown (a context already
	// done) comes after both are fully registered with the poller.
	if s.inline && !s.startInline() {
		s.inline = false
	}
	if !s.inline {
		s.startDir(&s.b2c)
		s.startDir(&s.c2b)
	}
	s.mu.Unlock()
}

// startDir starts driving d: under the poller if it can, else with a
// goroutine of its own. Either holds a reference until d is finished.
func (s *Session) startDir(d *dir) {
	s.refs.Add(1)
	if s.startPolled(d) {
		return
	}
	go func() {
		defer s.release()
		s.loop(d)
	}()
}

// release gives back a reference; the last one ends the session.
func (s *Session) release() {
	switch n := s.refs.Add(-1); {
	case n == 0:
		s.finish()
	case n < 0:
		panic("splice: session reference released twice")
	}
}

// finish reports the session's end to Start's callback.
func (s *Session) finish() {
	s.mu.Lock()
	done := s.done
	s.done = nil
	st := Stats{
		Duration:         time.Since(s.start),
		FramesIn:         s.c2b.frames.Load(),
		FramesOut:        s.b2c.frames.Load(),
		BytesIn:          s.c2b.bytes.Load(),
		BytesOut:         s.b2c.bytes.Load(),
		ClientCloseCode:  s.c2b.closeCode,
		BackendCloseCode: s.b2c.closeCode,
		ClosedBy:         s.closedBy,
		Reason:           s.cause.String(),
		LimitHits:        s.c2b.limitHits,
		Err:              s.err,
	}
	s.mu.Unlock()
	done(st)
}

// Counts returns the frames and bytes handled so far each way (in: client
// to backend), as Stats will count them. It may be called from any
// goroutine while the session runs, for live metrics.
func (s *Session) Counts() (framesIn, framesOut, bytesIn, bytesOut int64) {
	return s.c2b.frames.Load(), s.b2c.frames.Load(), s.c2b.bytes.Load(), s.b2c.bytes.Load()
}

// Inline reports whether the session runs on a poller's event loop, with
// no goroutine of its own (Linux, both sides plain sockets, no throttling).
func (s *Session) Inline() bool { return s.inline }

// Shutdown ends the session gracefully: close 1001 goes to both peers and
// they get closeGrace (one second) to answer before the connections close.
// It does not wait for that; Run returns (or Start's callback runs) when it
// is over. Shutdown may be called from any goroutine, more than once, before,
// during or after the session; called before Run or Start, it takes effect as
// soon as the session starts.
func (s *Session) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdownReq {
		return
	}
	s.shutdownReq = true
	if s.running && !s.torn {
		s.spawnShutdownLocked()
	}
}

// spawnShutdownLocked starts the shutdown in its own goroutine: writing the
// close frames may block on a slow peer (until teardown at the latest), and
// Shutdown's caller must not.
func (s *Session) spawnShutdownLocked() {
	s.refs.Add(1)
	go func() {
		defer s.release()
		s.initiate(causeShutdown, ws.StatusGoingAway, ws.StatusGoingAway, nil)
	}()
}

// loop runs direction d on the calling goroutine until its source is done,
// then reports it: the driver where the poller cannot serve.
func (s *Session) loop(d *dir) {
	if d.src.raw != nil {
		d.readyFn = d.probeFn()
	}
	if len(d.pre) > 0 {
		d.bytes.Add(int64(len(d.pre)))
		s.feed(d, d.pre, time.Now())
		d.pre = nil
	}
	var err error
	for err == nil {
		err = s.pump(d)
	}
	s.sourceDone(d, err)
}

// pump waits until d's source is readable, then reads and handles what is
// there with a pooled buffer, and gives the buffer back before returning.
func (s *Session) pump(d *dir) error {
	src := d.src
	if src.raw != nil {
		if err := src.raw.Read(d.readyFn); err != nil {
			return err
		}
	}
	bp := d.rbuf
	if bp != nil {
		// The probe read already: handle that first.
		d.rbuf = nil
	} else {
		bp = bufPool.Get().(*[]byte)
	}
	defer bufPool.Put(bp)
	buf := *bp
	if d.readCap > 0 && d.readCap < len(buf) {
		buf = buf[:d.readCap]
	}
	if d.rn > 0 || d.rerr != nil {
		n, err := d.rn, d.rerr
		d.rn, d.rerr = 0, nil
		if n > 0 {
			d.bytes.Add(int64(n))
			s.feed(d, buf[:n], time.Now())
		}
		if err != nil || n < len(buf) {
			return err
		}
	}
	poll := false
	for {
		if poll {
			// crypto/tls may hold records it already took off the socket,
			// so a quiet socket does not mean there is nothing to read.
			// Read what it holds with a deadline in the past, which never
			// blocks.
			src.conn.SetReadDeadline(aLongTimeAgo)
		}
		n, err := src.conn.Read(buf)
		if poll {
			src.conn.SetReadDeadline(s.readDeadline(d))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
		}
		if n > 0 {
			d.bytes.Add(int64(n))
			s.feed(d, buf[:n], time.Now())
		}
		switch {
		case err != nil:
			return err
		case src.raw == nil:
			return nil
		case src.tls:
			poll = true
		case n < len(buf):
			return nil
		}
	}
}

// readDeadline is d's read deadline: the end of its quiet period, or none.
func (s *Session) readDeadline(d *dir) time.Time {
	if d.rdl == 0 {
		return time.Time{}
	}
	return s.start.Add(time.Duration(d.rdl))
}

// sourceDone handles the end of d's source: EOF, an error, or teardown.
func (s *Session) sourceDone(d *dir, err error) {
	p := d.src
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	h := &s.hs[p.side]
	vanished := !h.from
	if vanished {
		var e error
		if !errors.Is(err, io.EOF) {
			e = fmt.Errorf("reading from %s: %w", p.side, err)
		}
		if s.closedBy == p.side.String() && s.cause == causeNone {
			// p claimed the close with a close frame it never finished.
			s.closedBy = ""
		}
		s.setEndLocked(p.side.String(), goneCause(p.side), e)
		h.from, h.to = true, true
	}
	if d.dstMid {
		// The source left its destination inside a frame that can never be
		// finished, so no close frame can follow it: do not wait for that
		// peer either.
		o := &s.hs[d.dst.side]
		o.from, o.to = true, true
		d.dst.gone.Store(true)
	}
	s.armGraceLocked()
	done := s.doneLocked()
	s.mu.Unlock()
	if vanished {
		p.gone.Store(true)
	}
	if done {
		s.teardown()
		return
	}
	if vanished {
		s.requestClose(d.dst, goneCode(d.dst.side), goneCause(p.side))
	}
}

// initiate starts a close decided by the proxy: clientCode to the client,
// backendCode to the backend. The first cause recorded wins.
func (s *Session) initiate(c cause, clientCode, backendCode ws.StatusCode, err error) {
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	s.setEndLocked("proxy", c, err)
	s.armGraceLocked()
	s.mu.Unlock()
	s.requestClose(&s.client, clientCode, c)
	s.requestClose(&s.backend, backendCode, c)
}

// writeFailed handles a failed write to p: p is gone.
func (s *Session) writeFailed(p *peer, err error) {
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	s.setEndLocked(p.side.String(), goneCause(p.side), fmt.Errorf("writing to %s: %w", p.side, err))
	s.hs[p.side].from, s.hs[p.side].to = true, true
	s.armGraceLocked()
	done := s.doneLocked()
	s.mu.Unlock()
	p.gone.Store(true)
	if done {
		s.teardown()
		return
	}
	o := s.other(p)
	s.requestClose(o, goneCode(o.side), goneCause(p.side))
}

// noteCloseFrom records that a close frame came from p.
func (s *Session) noteCloseFrom(p *peer) {
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	s.hs[p.side].from = true
	s.setEndLocked(p.side.String(), causeNone, nil)
	s.armGraceLocked()
	done := s.doneLocked()
	s.mu.Unlock()
	if done {
		s.teardown()
	}
}

// claimClose records p as the one who ended the session, if nobody did yet,
// before p's close frame goes on and the answer can race with it.
func (s *Session) claimClose(p *peer) {
	s.mu.Lock()
	s.setEndLocked(p.side.String(), causeNone, nil)
	s.mu.Unlock()
}

// noteCloseTo records that a close frame was written to p.
func (s *Session) noteCloseTo(p *peer) {
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	s.hs[p.side].to = true
	s.armGraceLocked()
	done := s.doneLocked()
	s.mu.Unlock()
	if done {
		s.teardown()
	}
}

// stuck records that d dropped the rest of a frame whose header it had
// forwarded: the destination can get no close frame and is given up.
func (s *Session) stuck(d *dir) {
	d.dst.gone.Store(true)
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	o := &s.hs[d.dst.side]
	o.from, o.to = true, true
	done := s.doneLocked()
	s.mu.Unlock()
	if done {
		s.teardown()
	}
}

func (s *Session) other(p *peer) *peer {
	if p == &s.client {
		return &s.backend
	}
	return &s.client
}

// setEndLocked records who ended the session and why, if nobody did yet.
func (s *Session) setEndLocked(by string, c cause, err error) {
	if s.closedBy != "" {
		return
	}
	s.closedBy, s.cause, s.err = by, c, err
}

func (s *Session) doneLocked() bool {
	return s.hs[0].from && s.hs[0].to && s.hs[1].from && s.hs[1].to
}

// armGraceLocked starts the close grace timer if it is not running yet.
func (s *Session) armGraceLocked() {
	s.closing.Store(true)
	if s.grace == nil && !s.torn {
		s.refs.Add(1)
		s.grace = time.AfterFunc(closeGrace, s.onGrace)
	}
}

// maxGraceExtensions bounds how long a close may wait for the end of a
// frame that keeps moving: this many more closeGrace periods.
const maxGraceExtensions = 30

func (s *Session) onGrace() {
	defer s.release()
	// A close frame can only follow a frame, not cut it. If one still
	// waits for the end of a frame while the session moved bytes during
	// the grace (a long frame to a slow reader), the grace is extended, so
	// that the peer gets the whole frame and then its close code rather
	// than a cut connection; at most maxGraceExtensions times. Shutdown's
	// own deadline (Run's context) still ends the session on time.
	n := s.c2b.bytes.Load() + s.b2c.bytes.Load()
	moved := n != s.graceAt
	s.graceAt = n
	if moved && (s.closeWaits(&s.client) || s.closeWaits(&s.backend)) {
		s.mu.Lock()
		if !s.torn {
			s.refs.Add(1)
			s.grace.Reset(closeGrace)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	s.teardown()
}

// closeWaits reports whether a close frame for p still waits for the end of
// a frame to p, and takes one of p's extensions if so.
func (s *Session) closeWaits(p *peer) bool {
	if p.pendClose.Load() == 0 || p.gone.Load() || p.graceUsed >= maxGraceExtensions {
		return false
	}
	// A writer blocked on p holds the lock: it is in a frame too.
	mid := true
	if p.wmu.TryLock() {
		mid = p.midFrame && !p.closed
		p.wmu.Unlock()
	}
	if mid {
		p.graceUsed++
	}
	return mid
}

func (s *Session) onIdle() {
	defer s.release()
	s.mu.Lock()
	if s.torn || s.closing.Load() {
		s.mu.Unlock()
		return
	}
	quiet := time.Since(s.start) - time.Duration(s.lastActive.Load())
	if left := s.opt.IdleTimeout - quiet; left > 0 {
		s.refs.Add(1)
		s.idle.Reset(left)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.initiate(causeIdle, ws.StatusGoingAway, ws.StatusGoingAway, nil)
}

// ackSlack is how many acknowledged bytes do not show that the client
// reads: the ping itself, in a TLS record, which its kernel acknowledges
// whether or not anything reads it.
const ackSlack = 64

func (s *Session) onPing() {
	defer s.release()
	s.mu.Lock()
	if s.torn || s.closing.Load() {
		s.mu.Unlock()
		return
	}
	if s.pingSent.Load() != s.pongGot.Load() {
		// The last ping is unanswered. A client that sent bytes since
		// it went out (or since the last tick) is alive, only busy: it
		// cannot answer in the middle of a frame it is sending. So is
		// one that acknowledged bytes: it is still reading what came
		// before the ping (a long frame, slowly). A ping that went out
		// less than an interval ago gets the rest of the interval.
		// Otherwise the client is gone.
		since := time.Since(s.start) - time.Duration(s.pingAt.Load())
		read := s.c2b.bytes.Load()
		acked, ackedOK := ackedBytes(s.client.raw)
		wait := s.opt.PingInterval
		switch {
		case read != s.pingFrom.Load() || ackedOK && acked-s.pingAcked.Load() > ackSlack:
			s.pingFrom.Store(read)
			s.pingAcked.Store(acked)
		case since < wait:
			wait -= since
		default:
			s.mu.Unlock()
			s.initiate(causePing, ws.StatusGoingAway, ws.StatusGoingAway, nil)
			return
		}
		s.refs.Add(1)
		s.ping.Reset(wait)
		s.mu.Unlock()
		return
	}
	// A ping still waiting for the client stream to reach a frame boundary
	// is not due yet; do not queue another.
	if !s.client.pendPing.Load() {
		s.pingSeq.Add(1)
		s.client.pendPing.Store(true)
	}
	s.refs.Add(1)
	s.ping.Reset(s.opt.PingInterval)
	s.mu.Unlock()
	s.kick(&s.client)
}

func (s *Session) onCancel() {
	defer s.release()
	s.hurry.Store(true)
	now := time.Now()
	s.client.conn.SetWriteDeadline(now.Add(hurryWriteTimeout))
	s.backend.conn.SetWriteDeadline(now.Add(hurryWriteTimeout))
	s.initiate(causeCanceled, ws.StatusGoingAway, ws.StatusGoingAway, nil)
	s.teardown()
}

// teardown ends the session: timers stop, limiter waits end, both sockets
// leave the poller, both connections close, and with them both directions.
func (s *Session) teardown() {
	s.mu.Lock()
	if s.torn {
		s.mu.Unlock()
		return
	}
	s.torn = true
	stopped := int32(0)
	for _, t := range []*time.Timer{s.idle, s.ping, s.grace} {
		if t != nil && t.Stop() {
			stopped++ // the callback will not run to release it
		}
	}
	if s.stopCtx != nil && s.stopCtx() {
		stopped++
	}
	s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	// Out of the epoll set before the descriptors close and their numbers
	// can go to other sockets.
	s.unwatch(&s.c2b)
	s.unwatch(&s.b2c)
	s.client.close()
	s.backend.close()
	// Teardown's own reference goes last: nothing can end the session
	// before the connections are closed.
	if stopped > 0 {
		s.refs.Add(-stopped)
	}
	s.release()
}

// aLongTimeAgo is a read deadline that makes a read return at once.
var aLongTimeAgo = time.Unix(1, 0)
