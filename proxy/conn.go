package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/proxy/h1"
)

// MaxHeaderBytes caps a request head, start line included (SPEC: 1 MiB).
const MaxHeaderBytes = 1 << 20

// ConnOptions configure a ConnServer for one listener.
type ConnOptions struct {
	// TLS says connections arrive over TLS: X-Forwarded-Proto is https.
	TLS bool
	// Fallback, when it returns a handler, serves every request through it
	// instead of the proxy: the plain listener with TLS on answers ACME
	// challenges and redirects that way. nil = always proxy.
	Fallback func() http.Handler
	// ExtraHeader appends header lines ("Name: value\r\n") to every
	// response, such as Strict-Transport-Security. nil = none.
	ExtraHeader func(b []byte) []byte
	// H2, with TLS, receives connections that negotiated HTTP/2.
	H2 func(*tls.Conn)
	// Logger receives connection-level errors at debug level.
	Logger *slog.Logger
}

// ConnServer serves HTTP/1.x on the public listeners with sluice's own
// connection loop: requests are parsed strictly by package h1, REST
// requests to plain-http upstreams are forwarded without net/http's server
// or ReverseProxy, and anything else (WebSocket upgrades, https upstreams,
// fallback handlers) goes to an http.Handler through a small adapter.
type ConnServer struct {
	h    *Handler
	opts ConnOptions

	mu      sync.Mutex
	conns   map[*serverConn]struct{}
	lns     map[net.Listener]struct{}
	closing atomic.Bool    // read per request, so not under mu
	forced  atomic.Bool    // Close ran: connections were closed under their exchanges
	wg      sync.WaitGroup // one count per connection being served
	workers *workers
}

// NewConnServer returns a ConnServer that proxies with h.
func (h *Handler) NewConnServer(opts ConnOptions) *ConnServer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &ConnServer{h: h, opts: opts, conns: map[*serverConn]struct{}{}, lns: map[net.Listener]struct{}{}, workers: newWorkers()}
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on ln until Shutdown or Close, serving each on
// its own goroutine. With tlsConfig, connections are TLS: those that
// negotiate h2 go to ConnOptions.H2.
func (s *ConnServer) Serve(ln net.Listener, tlsConfig *tls.Config) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if isTimeout(err) || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors and the like: wait, as
				// net/http does, instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		// The connection is wrapped before it is tracked: Close and
		// Shutdown read sc.c from then on.
		if tlsConfig != nil {
			c = tls.Server(c, tlsConfig)
		} else {
			c = newRawSock(c)
		}
		sc := conns.Get().(*serverConn)
		sc.s, sc.c, sc.tlsConfig = s, c, tlsConfig
		if !s.track(sc) {
			c.Close()
			return ErrServerClosed
		}
		s.workers.serve(sc)
	}
}

// isTimeout reports whether err is a timeout. The net.Error it looks for
// is declared only once err is known, so that the common nil case does
// not move a variable to the heap.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *ConnServer) isClosing() bool { return s.closing.Load() }

func (s *ConnServer) track(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *ConnServer) untrack(sc *serverConn) {
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, closes idle connections, lets each request in
// flight finish (its connection then closes) and waits for that or for ctx.
// When ctx ends first the remaining connections are closed and ctx's error
// is returned.
func (s *ConnServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	for sc := range s.conns {
		sc.closeIfIdle()
	}
	s.mu.Unlock()
	s.workers.close()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	// A connection can turn idle after the sweep above: look again now
	// and then until everything is gone.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			s.Close()
			<-done
			return ctx.Err()
		case <-tick.C:
			s.mu.Lock()
			for sc := range s.conns {
				sc.closeIfIdle()
			}
			s.mu.Unlock()
		}
	}
}

// Close closes the listeners and every connection at once. Hijacked
// connections (WebSocket sessions) are not this server's any more.
func (s *ConnServer) Close() {
	s.mu.Lock()
	s.closing.Store(true)
	s.forced.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	for sc := range s.conns {
		// A connection stays tracked for a moment after its session
		// took it over; closing it then would take the socket out of
		// the session's poller unseen, and the session would wait for
		// its client for ever.
		if sc.state.Load() != connHijacked {
			sc.c.Close()
		}
	}
	s.mu.Unlock()
	s.workers.close()
}

// Connection states, for Shutdown: an idle connection waits for the first
// byte of a request and can be closed at once.
const (
	connIdle int32 = iota
	connActive
	connHijacked
)

// serverConn is one client connection.
type serverConn struct {
	s         *ConnServer
	c         net.Conn
	tlsConfig *tls.Config // the listener's, when the connection starts with a TLS handshake
	state     atomic.Int32
	peer      netip.AddrPort
	tls       *tls.ConnectionState

	br     *bufio.Reader
	req    h1.Request
	resp   h1.Response
	body   h1.Body // the client's request body
	ub     h1.Body // the upstream's response body
	out    []byte  // response head under construction
	up     []byte  // upstream request head under construction
	peerIP string

	// gone is set when the client hung up while its exchange ran.
	gone   atomic.Bool
	hangUp *hangUpWatch // made at the first exchange that forwards

	// The request body streams to the upstream from a goroutine of its
	// own (see streamBody) while the connection's goroutine waits for the
	// answer. bodyRunning: it was started and not yet joined (owned by the
	// connection's goroutine); bodyDone: its result; bodyRace: who came
	// first, the end of the body or the answer's head (bodyWaiting,
	// bodyFirst, headFirst); bodyAbort: stop at the next read or write.
	bodyRunning bool
	bodySent    int64 // body bytes read, written by the body's goroutine
	bodyDone    chan error
	bodyRace    atomic.Int32
	bodyAbort   atomic.Bool

	// linger: the connection closes with request bytes that may still be
	// coming, so its close waits for them (lingerClose).
	linger bool

	// adapted: a request went through net/http types (serveHandler),
	// whose goroutines may outlive the connection, so its state is not
	// reused.
	adapted bool
}

// conns lends connection state to new connections: the request and
// response heads and the head buffers keep the storage they grew, so a
// new connection's first exchange does not allocate it again.
var conns = sync.Pool{New: func() any { return new(serverConn) }}

// recycle gives sc back to conns once its connection is finished and
// untracked, unless something may still refer to it.
func (sc *serverConn) recycle() {
	w := sc.hangUp
	if sc.adapted || w != nil && w.armed {
		return
	}
	sc.req.Reset()
	sc.resp.Reset()
	out, up := keepSmall(sc.out), keepSmall(sc.up)
	// A disarmed watch has stopped and returned: it stays with sc.
	if w != nil {
		w.target.Store(nil)
	}
	*sc = serverConn{req: sc.req, resp: sc.resp, out: out, up: up, hangUp: w, bodyDone: sc.bodyDone}
	conns.Put(sc)
}

// keepSmall empties b for reuse, unless it grew unusually large: that
// storage does not stay pinned in the pool.
func keepSmall(b []byte) []byte {
	if cap(b) > 8<<10 {
		return nil
	}
	return b[:0]
}

// watchAfter is how long an exchange runs before sluice starts watching
// for the client hanging up: quick exchanges never pay for the watch.
const watchAfter = 100 * time.Millisecond

// hangUpWatch watches a client connection for hanging up during its
// exchanges. It is made once per connection and re-armed per exchange, so
// that an exchange that ends before watchAfter costs a timer reset and
// nothing else.
type hangUpWatch struct {
	sc     *serverConn
	timer  *time.Timer
	done   chan struct{}          // a token when a fired watch has returned
	target atomic.Pointer[h1Conn] // the upstream side to wake when the client is gone
	armed  bool                   // owned by the connection's goroutine
}

// watch arms the connection's watch: if the client hangs up while the
// exchange runs past watchAfter, target's deadlines are set in the past and
// sc.gone is set. Plain TCP only: on TLS, a hang-up is first a
// close_notify record, which a peek cannot tell from data. stopWatch must
// be called before the client is read from again.
func (sc *serverConn) watch(target *h1Conn) {
	if sc.tls != nil {
		return
	}
	w := sc.hangUp
	if w == nil {
		w = &hangUpWatch{sc: sc, done: make(chan struct{}, 1)}
		w.timer = time.AfterFunc(time.Hour, w.run)
		w.timer.Stop()
		sc.hangUp = w
	}
	sc.gone.Store(false)
	w.target.Store(target)
	w.armed = true
	w.timer.Reset(watchAfter)
}

func (w *hangUpWatch) run() {
	defer func() { w.done <- struct{}{} }()
	watchHangUp(w.sc.c, func() {
		w.sc.gone.Store(true)
		if t := w.target.Load(); t != nil {
			t.c.SetDeadline(time.Unix(1, 0))
		}
	})
}

// stopWatch disarms the watch and waits for it if it had started.
func (sc *serverConn) stopWatch() {
	w := sc.hangUp
	if w == nil || !w.armed {
		return
	}
	w.armed = false
	if w.timer.Stop() {
		return
	}
	sc.c.SetReadDeadline(time.Unix(1, 0)) // wakes the watch
	<-w.done
	sc.c.SetReadDeadline(time.Time{})
}

func (sc *serverConn) closeIfIdle() {
	if sc.state.Load() == connIdle {
		sc.c.Close()
	}
}

// readers lends 4 KiB request readers to connections; a head larger than
// that is assembled line by line (h1 copies it out).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// run serves the connection from its start.
func (sc *serverConn) run() {
	if sc.tlsConfig != nil {
		sc.serveTLS()
	} else {
		sc.serve()
	}
}

func (sc *serverConn) serveTLS() {
	tc := sc.c.(*tls.Conn)
	timeout := sc.s.h.table.Load().cfg.Timeouts.ReadHeader
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		sc.s.opts.Logger.Debug("TLS handshake failed", "client", sc.c.RemoteAddr().String(), "error", err)
		tc.Close()
		sc.s.untrack(sc)
		return
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol == "acme-tls/1" {
		// A TLS-ALPN-01 validation: the handshake was all of it.
		tc.Close()
		sc.s.untrack(sc)
		return
	}
	if st.NegotiatedProtocol == "h2" && sc.s.opts.H2 != nil {
		// net/http's HTTP/2 server owns it from here.
		sc.s.untrack(sc)
		sc.s.opts.H2(tc)
		return
	}
	sc.tls = &st
	sc.serve()
}

// serve reads and answers requests until the connection ends.
func (sc *serverConn) serve() {
	defer func() {
		sc.s.untrack(sc)
		sc.recycle()
	}()
	if ta, ok := sc.c.RemoteAddr().(*net.TCPAddr); ok {
		sc.peer = ta.AddrPort()
		sc.peerIP = sc.peer.Addr().Unmap().String()
	}
	sc.br = readers.Get().(*bufio.Reader)
	sc.br.Reset(sc.c)
	defer func() {
		if sc.state.Load() == connHijacked {
			return // the reader went with the connection
		}
		if sc.linger && !sc.s.isClosing() {
			sc.lingerClose()
		}
		sc.c.Close()
		sc.br.Reset(nil)
		readers.Put(sc.br)
	}()
	for first := true; ; first = false {
		cfg := sc.s.h.table.Load().cfg
		if sc.s.isClosing() {
			return
		}
		// A new connection has read_header, from its start, to send its
		// first head, as in nginx; that one deadline covers the wait for
		// the first byte and the head. Between requests the wait is idle.
		timed := false
		if sc.br.Buffered() == 0 {
			d := cfg.Timeouts.Idle
			if first && cfg.Timeouts.ReadHeader > 0 {
				d, timed = cfg.Timeouts.ReadHeader, true
			}
			if d > 0 {
				sc.c.SetReadDeadline(time.Now().Add(d))
			} else if !first {
				sc.c.SetReadDeadline(time.Time{})
			}
			if _, err := sc.br.Peek(1); err != nil {
				return
			}
		}
		sc.state.Store(connActive)
		if d := cfg.Timeouts.ReadHeader; d > 0 && !timed {
			sc.c.SetReadDeadline(time.Now().Add(d))
		}
		err := h1.ReadRequest(sc.br, &sc.req, MaxHeaderBytes)
		if err != nil {
			sc.refuse(err)
			return
		}
		sc.c.SetReadDeadline(time.Time{})
		if !sc.exchange() {
			return
		}
		if !sc.state.CompareAndSwap(connActive, connIdle) {
			return
		}
	}
}

// Lingering close: a connection closed while its client still sends (the
// rest of a body that was answered without being read) would reset, and a
// reset can destroy the answer before the client reads it. So the write
// side closes first, and what the client still sends is read and dropped
// until it closes too, for at most lingerTime, and lingerRead between two
// reads (nginx: lingering_time, lingering_timeout).
const (
	lingerTime = 10 * time.Second
	lingerRead = 2 * time.Second
)

func (sc *serverConn) lingerClose() {
	cw, ok := sc.c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	bufp := copyBuffers.Get()
	defer copyBuffers.Put(bufp)
	end := time.Now().Add(lingerTime)
	for {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		t := now.Add(lingerRead)
		if t.After(end) {
			t = end
		}
		sc.c.SetReadDeadline(t)
		if _, err := sc.c.Read(bufp); err != nil {
			return
		}
	}
}

// refuse answers a request that could not be read, when there is anyone
// to answer, and logs it.
func (sc *serverConn) refuse(err error) {
	var he *h1.Error
	if !errors.As(err, &he) {
		return // EOF, reset, or the read_header timeout: nobody to answer
	}
	sc.req.Method = nil // not this request's: the head did not parse
	x := &exchange{start: now(), method: "-", path: "-", remote: sc.c.RemoteAddr().String()}
	x.info.reason, x.info.err = "bad_request", err
	sc.writeError(x, he.Status, he.Msg, true, "")
}
