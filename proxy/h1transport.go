package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// h1Transport sends requests to plain-http upstreams over pooled HTTP/1.1
// connections and reads each response on the caller's goroutine. It does
// what net/http.Transport does for this one case without its two goroutines
// per connection and the hand-offs between them, which profiles showed to
// be most of the proxy's own CPU per request.
//
// It dials with the route's connect timeout, bounds the wait for a
// response header, reuses a connection only after its response body was
// read to the end, checks that an idle connection is still open before
// reusing it, and resends a request that can be resent once on a fresh
// connection when a reused one turns out to be dead.
type h1Transport struct {
	dialer         net.Dialer
	responseHeader time.Duration // 0 = no limit

	mu   sync.Mutex
	idle map[string][]*h1Conn // by host:port, most recently used last
}

const (
	h1MaxIdlePerHost = 1024
	h1IdleTimeout    = 90 * time.Second
)

// h1Conn is one upstream connection.
type h1Conn struct {
	addr      string // pool key: host:port as dialled
	c         net.Conn
	br        *bufio.Reader // nil while idle: an idle connection holds no buffer
	bw        *bufio.Writer
	idleSince time.Time
}

// Buffers are lent to connections while they carry a request, so that a
// pool of idle connections costs their sockets and little else.
var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
)

// takeReader lends pc a reader only: the HTTP/1 path writes directly.
func (pc *h1Conn) takeReader() {
	pc.br = h1Readers.Get().(*bufio.Reader)
	pc.br.Reset(pc.c)
}

func (pc *h1Conn) takeBuffers() {
	pc.br = h1Readers.Get().(*bufio.Reader)
	pc.br.Reset(pc.c)
	pc.bw = h1Writers.Get().(*bufio.Writer)
	pc.bw.Reset(pc.c)
}

// dropBuffers gives the buffers back; the reader must hold nothing unread.
func (pc *h1Conn) dropBuffers() {
	if pc.br != nil {
		pc.br.Reset(nil)
		h1Readers.Put(pc.br)
		pc.br = nil
	}
	if pc.bw != nil {
		pc.bw.Reset(nil)
		h1Writers.Put(pc.bw)
		pc.bw = nil
	}
}

// close closes the connection and gives its buffers back.
func (pc *h1Conn) close() {
	pc.c.Close()
	pc.dropBuffers()
}

func newH1Transport(k transportKey) *h1Transport {
	return &h1Transport{
		dialer:         net.Dialer{Timeout: k.connect, KeepAlive: 30 * time.Second},
		responseHeader: k.responseHeader,
		idle:           make(map[string][]*h1Conn),
	}
}

// RoundTrip sends req and returns the upstream's response, whose body must
// be closed.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr += ":80"
	}
	for {
		pc, reused := t.get(addr, false)
		if pc == nil {
			c, err := t.dialer.DialContext(req.Context(), "tcp", addr)
			if err != nil {
				return nil, err
			}
			pc = &h1Conn{addr: addr, c: newRawSock(c)}
		}
		pc.takeBuffers()
		resp, answered, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.close()
		// A reused connection the upstream had closed fails before any
		// answer; a request that can be sent again goes on a new one.
		if reused && !answered && req.Context().Err() == nil && retryable(req) {
			continue
		}
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, err
	}
}

// exchange writes req on pc and reads the response header. answered
// reports whether anything came back (so the request must not be resent).
func (t *h1Transport) exchange(pc *h1Conn, req *http.Request) (resp *http.Response, answered bool, err error) {
	stop := context.AfterFunc(req.Context(), func() { pc.c.SetDeadline(time.Unix(1, 0)) })
	if err := writeRequest(pc.bw, req); err != nil {
		stop()
		return nil, false, err
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, false, err
	}
	// response_header counts from the end of the request, as a slow
	// upload is the client's pace, not the upstream's.
	if t.responseHeader > 0 {
		pc.c.SetReadDeadline(time.Now().Add(t.responseHeader))
	}
	// Nothing at all back (EOF, reset) means the connection was dead
	// before our request: safe to send again elsewhere. A timeout is not.
	if _, err := pc.br.Peek(1); err != nil {
		stop()
		return nil, isTimeout(err), err
	}
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			return nil, true, err
		}
		// 1xx answers (100 Continue, 103 Early Hints) are not relayed.
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	pc.c.SetDeadline(time.Time{})
	if !stop() {
		// The request was cancelled while the header arrived.
		return nil, true, req.Context().Err()
	}
	keep := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
	if resp.Body == http.NoBody {
		t.release(req.Context(), pc, keep)
		return resp, true, nil
	}
	resp.Body = &h1Body{rc: resp.Body, t: t, pc: pc, keep: keep, stop: context.AfterFunc(req.Context(), func() { pc.c.Close() })}
	return resp, true, nil
}

// writeRequest writes req to w. A failure to read the request body (a
// client that went away, a body over max_body) is returned as itself, not
// as net/http's opaque wrapper, so the caller can answer it rightly.
func writeRequest(w *bufio.Writer, req *http.Request) error {
	if req.Body == nil || req.Body == http.NoBody {
		return req.Write(w)
	}
	rb := &recordingBody{ReadCloser: req.Body}
	out := *req
	out.Body = rb
	err := out.Write(w)
	if rb.err != nil && rb.err != io.EOF {
		return rb.err
	}
	return err
}

// recordingBody remembers the first error reading a request body.
type recordingBody struct {
	io.ReadCloser
	err error
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && b.err == nil {
		b.err = err
	}
	return n, err
}

// release puts pc back in the pool when it can carry another request.
func (t *h1Transport) release(ctx context.Context, pc *h1Conn, keep bool) {
	if !keep || ctx.Err() != nil || pc.br.Buffered() > 0 {
		pc.close()
		return
	}
	t.put(pc)
}

// get returns an idle connection to addr that is still open, or nil.
// trust says the request can be resent if the connection turns out dead.
func (t *h1Transport) get(addr string, trust bool) (*h1Conn, bool) {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[addr]
		if len(list) == 0 {
			t.mu.Unlock()
			return nil, false
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[addr] = list[:len(list)-1]
		t.mu.Unlock()
		idle := now.Sub(pc.idleSince)
		// For a request that can be resent, a connection back in the
		// pool for less than freshIdle is taken on trust: a dead one is
		// caught by resending. Others are looked at first (one more
		// syscall), since a POST must not meet a connection the
		// upstream has closed.
		if trust && idle < freshIdle || idle < h1IdleTimeout && peekAlive(pc.c) {
			return pc, true
		}
		pc.close()
	}
}

// freshIdle is how long a pooled connection is reused without checking.
const freshIdle = time.Second

func (t *h1Transport) put(pc *h1Conn) {
	pc.dropBuffers()
	pc.idleSince = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.idle[pc.addr]
	if len(list) >= h1MaxIdlePerHost {
		pc.close()
		return
	}
	t.idle[pc.addr] = append(list, pc)
}

// CloseIdleConnections closes every pooled connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = make(map[string][]*h1Conn)
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.close()
		}
	}
}

// sweep closes pooled connections that were idle too long or that the
// upstream has closed, so their sockets do not linger until the next
// request to that upstream.
func (t *h1Transport) sweep(now time.Time) {
	var dead []*h1Conn
	t.mu.Lock()
	for addr, list := range t.idle {
		kept := list[:0]
		for _, pc := range list {
			if now.Sub(pc.idleSince) < h1IdleTimeout && peekAlive(pc.c) {
				kept = append(kept, pc)
			} else {
				dead = append(dead, pc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(t.idle, addr)
		} else {
			t.idle[addr] = kept
		}
	}
	t.mu.Unlock()
	for _, pc := range dead {
		pc.close()
	}
}

// h1Body is a response body that gives its connection back to the pool
// once it has been read to the end.
type h1Body struct {
	rc   io.ReadCloser
	t    *h1Transport
	pc   *h1Conn
	keep bool
	stop func() bool // ends the cancellation hook
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		// Not read to the end: the rest is still on the wire, so the
		// connection cannot carry another request.
		b.finish(false)
	}
	return nil
}

func (b *h1Body) finish(complete bool) {
	b.done = true
	if !b.stop() {
		complete = false // cancelled: the hook closed the connection
	}
	b.rc.Close()
	if complete && b.keep && b.pc.br.Buffered() == 0 {
		b.t.put(b.pc)
		return
	}
	b.pc.close()
}
