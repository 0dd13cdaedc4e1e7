package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/proxy/h1"
)

// b2s views b as a string without copying. The string is valid only while
// b's storage is (for a request head: until the exchange is logged).
func b2s(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// smallBody is the largest body sent in the same write as its head.
const smallBody = 16 << 10

// exchange serves the request in sc.req and reports whether the connection
// can carry another.
func (sc *serverConn) exchange() bool {
	req := &sc.req
	if fb := sc.s.opts.Fallback; fb != nil {
		if h := fb(); h != nil {
			return sc.serveHandler(h)
		}
	}
	t := sc.s.h.table.Load()
	x := &exchange{start: now(), method: b2s(req.Method), remote: sc.peerIP}
	completed := false
	defer func() {
		if !completed && x.info.reason == "" {
			x.info.reason = "aborted"
		}
		sc.finish(x)
	}()
	if string(req.Method) == "CONNECT" {
		x.host, x.path = b2s(req.Target), "-"
		x.info.reason = "connect_refused"
		sc.writeError(x, 405, "CONNECT is not supported", !sc.bodyless(), "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n")
		completed = true
		return sc.bodyless() && !req.Close
	}
	tgt, ok := parseTarget(req)
	if !ok {
		x.host, x.path = b2s(req.Host), b2s(req.Target)
		x.info.reason = "bad_request"
		sc.writeError(x, 400, "malformed request target", true, "")
		completed = true
		return false
	}
	x.host = tgt.host
	path := b2s(tgt.rawPath)
	if bytes.IndexByte(tgt.rawPath, '%') >= 0 {
		p, err := url.PathUnescape(path)
		if err != nil {
			x.path = path
			x.info.reason = "bad_request"
			sc.writeError(x, 400, "malformed request target", true, "")
			completed = true
			return false
		}
		path = p
	}
	x.path = path
	x.info.path = cleanPath(path)
	x.client, x.info.peerTrusted = sc.clientAddr(t.cfg.TrustedProxies)
	route, hostMatched := t.router.Lookup(tgt.host, x.info.path)
	if route != nil && !hostMatched && tgt.absolute {
		route = nil // never an open proxy
	}
	x.route = route
	keep := true
	switch {
	case route == nil:
		x.info.reason = "no_route"
		keep = sc.bodyless()
		sc.writeError(x, 404, "no route for this host and path", !keep, "")
	case req.Header.HasToken("Upgrade", "websocket") && req.Header.HasToken("Connection", "upgrade"):
		keep = sc.serveWebSocket(x, &tgt)
	case route.h1 == nil:
		// An https upstream: net/http's transport speaks TLS to it.
		completed = true
		x.websocket = true // logged by the handler it goes to
		return sc.serveHandler(sc.s.h)
	case !sc.allow(x):
		keep = sc.bodyless()
	default:
		keep = sc.forward(x, &tgt)
	}
	completed = true
	return keep && !req.Close
}

// finish accounts for x once: in metrics and the access log.
func (sc *serverConn) finish(x *exchange) {
	if !x.finished {
		x.finished = true
		sc.s.h.finish(x)
	}
}

// bodyless reports whether the request has no body, so that answering it
// without reading leaves the connection positioned at the next request.
func (sc *serverConn) bodyless() bool { return !sc.req.Chunked && sc.req.ContentLength == 0 }

// target is a request target taken apart.
type target struct {
	host     string // from an absolute-form target, or the Host header
	rawPath  []byte // escaped, as received
	query    []byte // without '?'; nil = none
	absolute bool
}

func parseTarget(req *h1.Request) (t target, ok bool) {
	raw := req.Target
	t.host = b2s(req.Host)
	if raw[0] != '/' {
		// absolute-form: http://authority/path?query
		i := bytes.Index(raw, []byte("://"))
		if i <= 0 || !(h1.EqualFold(raw[:i], "http") || h1.EqualFold(raw[:i], "https")) {
			return t, false
		}
		rest := raw[i+3:]
		end := bytes.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		if end == 0 || bytes.IndexByte(rest[:end], '@') >= 0 {
			return t, false
		}
		t.host, t.absolute = b2s(rest[:end]), true
		raw = rest[end:]
		if len(raw) == 0 || raw[0] == '?' {
			raw = append([]byte("/"), raw...) // rare: allocation is fine
		}
	}
	if i := bytes.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i] // a fragment has no business in a request: dropped
	}
	if i := bytes.IndexByte(raw, '?'); i >= 0 {
		t.rawPath, t.query = raw[:i], raw[i+1:]
	} else {
		t.rawPath = raw
	}
	return t, len(t.rawPath) > 0
}

// clientAddr is the Handler's clientAddr for a request on this connection.
func (sc *serverConn) clientAddr(trusted []netip.Prefix) (netip.Addr, bool) {
	addr := sc.peer.Addr().Unmap()
	if !addr.IsValid() || len(trusted) == 0 || !isTrusted(addr, trusted) {
		return addr, false
	}
	hdr := sc.req.Header
	for i := len(hdr) - 1; i >= 0; i-- {
		if !h1.EqualFold(hdr[i].Name, "X-Forwarded-For") {
			continue
		}
		var done bool
		if addr, done = walkForwardedFor(addr, b2s(hdr[i].Value), trusted); done {
			return addr, true
		}
	}
	return addr, true
}

// allow applies the route's per-client rate limit.
func (sc *serverConn) allow(x *exchange) bool {
	retry, over := sc.s.h.overLimit(x)
	if !over {
		return true
	}
	sc.writeError(x, 429, "too many requests", !sc.bodyless(), "Retry-After: "+retry+"\r\n")
	return false
}

// errors of the request body, told apart from the upstream's.
var (
	errBodyTooLarge = errors.New("request body too large")
)

// forward sends the request to an upstream and relays the answer. It
// reports whether the client connection can carry another request.
func (sc *serverConn) forward(x *exchange, tgt *target) bool {
	req := &sc.req
	route := x.route
	cfg := route.cfg
	hasBody := !sc.bodyless()
	if cfg.MaxBody > 0 && req.ContentLength > cfg.MaxBody {
		x.info.reason = "body_too_large"
		sc.writeError(x, 413, "request body too large", true, "")
		return false
	}
	sc.body.Reset(sc.br, req.ContentLength, req.Chunked)
	replayable := !hasBody && idempotent(req.Method)
	u := route.bal.pick(now(), nil)
	x.info.upstream = u
	tr := route.h1
	var pc *h1Conn
	for {
		var reused bool
		pc, reused = tr.get(u.addr, replayable)
		if pc == nil {
			c, err := tr.dialer.Dial("tcp", u.addr)
			if err != nil {
				u.markDown(now())
				if replayable && !x.info.retried && isDialError(err) {
					if next := route.bal.pick(now(), u); next != u {
						u, x.info.upstream, x.info.retried = next, next, true
						continue
					}
				}
				x.info.err, x.info.reason = err, "upstream_unreachable"
				sc.writeError(x, 502, "upstream unreachable", hasBody, "")
				return !hasBody
			}
			pc = &h1Conn{addr: u.addr, c: newRawSock(c)}
		}
		pc.takeReader()
		err := sc.roundTrip(x, pc, u, tgt, tr)
		if err == nil {
			break
		}
		sc.stopWatch()
		if sc.gone.Load() {
			pc.close()
			x.info.err, x.info.reason = nil, "client_gone" // err is our own wake-up
			if sc.s.forced.Load() {
				// The shutdown's grace ran out and closed the client's
				// connection: the client did not leave.
				x.info.reason = "shutdown"
			}
			x.rec.status = statusClientGone
			return false
		}
		pc.close()
		if errors.Is(err, errRetry) && replayable {
			if reused {
				// The pooled connection had been closed by the
				// upstream: send again on a new one.
				continue
			}
			// A new connection that failed before any answer: the
			// upstream went away under the request. Like nginx's
			// proxy_next_upstream, try the next upstream once.
			if next := route.bal.pick(now(), u); next != u && !x.info.retried {
				u, x.info.upstream, x.info.retried = next, next, true
				continue
			}
		}
		return sc.failed(x, err)
	}
	return sc.relay(x, pc, tr)
}

// errRetry marks an upstream connection that failed before answering
// anything, so a replayable request can go again.
var errRetry = errors.New("upstream connection closed before answering")

// upstreamError is a failure on the upstream side, with the response to
// give the client.
type upstreamError struct {
	status int
	reason string
	msg    string
	err    error
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// clientError is a failure reading the client's request body.
type clientError struct{ err error }

func (e *clientError) Error() string { return e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// roundTrip writes the request (and its body) on pc and reads the
// response head into sc.resp.
func (sc *serverConn) roundTrip(x *exchange, pc *h1Conn, u *upstream, tgt *target, tr *h1Transport) error {
	req := &sc.req
	cfg := x.route.cfg
	b := sc.appendUpstreamHead(sc.up[:0], x, u, tgt)
	sent := false
	if req.ContentLength > 0 && req.ContentLength <= smallBody && int64(sc.br.Buffered()) >= req.ContentLength && !req.Continue {
		// The whole body came with the head: one write for both.
		n := int(req.ContentLength)
		body, _ := sc.br.Peek(n)
		b = append(b, body...)
		sc.br.Discard(n)
		sc.body.Reset(sc.br, 0, false)
		x.body.n = int64(n)
		sent = true
	}
	sc.up = b
	if _, err := pc.c.Write(b); err != nil {
		if sent {
			return &upstreamError{502, "upstream_error", "bad gateway", err}
		}
		return errors.Join(errRetry, err)
	}
	if !sent && !sc.body.Done() {
		if req.Continue {
			if _, err := sc.c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
				return &clientError{err}
			}
		}
		// The body streams from a goroutine of its own while this one
		// waits for the answer: an upstream may answer before it has
		// read the whole body (an early 413, or a response that streams
		// back what it reads), and must not wait on us while we wait on
		// it.
		if sc.bodyDone == nil {
			sc.bodyDone = make(chan error, 1)
		}
		sc.bodyRace.Store(bodyWaiting)
		sc.bodyAbort.Store(false)
		sc.bodySent = 0
		sc.bodyRunning = true
		// x stays with this goroutine (and on its stack): the body's
		// goroutine counts in sc.bodySent, which joinBody adds to x.
		go sc.streamBody(pc, cfg.MaxBody, tr.responseHeader)
	} else {
		sc.awaitAnswer(pc, tr.responseHeader)
	}
	first := true
	for {
		err := h1.ReadResponse(pc.br, &sc.resp, req.Method, MaxHeaderBytes)
		if err != nil {
			if sc.bodyRunning {
				// A failure of the body (too large, malformed, the
				// client gone) is what ended the wait: it is the one to
				// answer.
				var ce *clientError
				var ue *upstreamError
				berr := sc.joinBody(x, pc, true)
				if errors.As(berr, &ce) || errors.As(berr, &ue) && isTimeout(ue.err) {
					return berr
				}
			}
			switch {
			case isTimeout(err):
				return &upstreamError{504, "upstream_timeout", "upstream did not answer in time", err}
			case first && (err == io.EOF || isReset(err)):
				return errors.Join(errRetry, &upstreamError{502, "upstream_closed", "upstream closed the connection", err})
			case errors.Is(err, h1.ErrBadResponse):
				return &upstreamError{502, "upstream_bad_response", "bad gateway", err}
			}
			return &upstreamError{502, "upstream_closed", "upstream closed the connection", err}
		}
		first = false
		if sc.resp.Status >= 200 {
			break
		}
		if sc.resp.Status == 101 {
			sc.joinBody(x, pc, true)
			return &upstreamError{502, "upstream_bad_upgrade", "bad gateway", errors.New("upstream switched protocols on a plain request")}
		}
		// 100 Continue, 103 Early Hints: not relayed.
	}
	if sc.bodyRunning && !sc.bodyRace.CompareAndSwap(bodyWaiting, headFirst) {
		// The body ended first: it is done, or failed.
		var ce *clientError
		if berr := sc.joinBody(x, pc, false); errors.As(berr, &ce) {
			return berr
		}
		// An upstream error (it stopped reading) leaves the answer it
		// gave to relay, on a client connection that cannot be reused.
	}
	// headFirst: relay streams the answer while the body still goes out,
	// and joins it at the end.
	pc.c.SetReadDeadline(time.Time{})
	return nil
}

// Orders of the body's end and the answer's head (serverConn.bodyRace).
const (
	bodyWaiting int32 = iota
	bodyFirst
	headFirst
)

// ioTimeout bounds each wait of a streamed body: for the next bytes of the
// client's request body, for the upstream to take the next bytes of it, and
// for the client to take the next bytes of the answer's body. It is
// nginx's client_body_timeout, proxy_send_timeout and send_timeout (all
// 60 s). Tests shorten it (nanoseconds).
var ioTimeout atomic.Int64

func init() { ioTimeout.Store(int64(60 * time.Second)) }

// errBodyTimeout: the client's body stalled for ioTimeout.
var errBodyTimeout = errors.New("request body timed out")

// streamBody sends the client's body to the upstream and hands the result
// to bodyDone. When the body ends before the answer's head came, it starts
// the wait for the answer as a body sent with the head would: the hang-up
// watch and the response_header deadline; when the body fails on the
// client's side, it wakes the wait so that the failure is answered.
func (sc *serverConn) streamBody(pc *h1Conn, maxBody int64, responseHeader time.Duration) {
	err := sc.sendBody(pc, maxBody)
	if sc.bodyRace.CompareAndSwap(bodyWaiting, bodyFirst) {
		var ce *clientError
		switch {
		case err == errBodyAborted:
		case err == nil:
			sc.awaitAnswer(pc, responseHeader)
		case errors.As(err, &ce) || isTimeout(err):
			// A body that failed on the client's side, or one that the
			// upstream stopped taking for ioTimeout, ends the wait.
			pc.c.SetReadDeadline(time.Unix(1, 0))
		default:
			// The upstream stopped taking the body; it may still
			// answer (an early 413 and a close).
			if responseHeader > 0 {
				pc.c.SetReadDeadline(time.Now().Add(responseHeader))
			}
		}
	}
	sc.bodyDone <- err
}

// awaitAnswer starts the wait for the answer once the whole request is out:
// from here on the client is only waited on, so the hang-up watch starts,
// and response_header counts from here.
func (sc *serverConn) awaitAnswer(pc *h1Conn, responseHeader time.Duration) {
	sc.watch(pc)
	if responseHeader > 0 {
		pc.c.SetReadDeadline(time.Now().Add(responseHeader))
	}
}

// joinBody waits for the body's goroutine, if one runs, counts what it
// sent in x, and returns its result; abort first makes it stop at its
// next read or write.
func (sc *serverConn) joinBody(x *exchange, pc *h1Conn, abort bool) error {
	if !sc.bodyRunning {
		return nil
	}
	sc.bodyRunning = false
	if abort {
		sc.bodyAbort.Store(true)
		past := time.Unix(1, 0)
		pc.c.SetWriteDeadline(past)
		sc.c.SetReadDeadline(past)
	}
	err := <-sc.bodyDone
	x.body.n += sc.bodySent
	return err
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}

// sendBody streams the client's body to the upstream, chunked when it
// came chunked, enforcing max_body. Each read of the body and each write
// of it has ioTimeout. It runs on its own goroutine (streamBody), which
// joinBody can stop: each deadline is set before the abort flag is
// looked at, so that an abort's deadline in the past is never replaced
// by a later one.
func (sc *serverConn) sendBody(pc *h1Conn, maxBody int64) error {
	bufp := copyBuffers.Get()
	defer copyBuffers.Put(bufp)
	timeout := time.Duration(ioTimeout.Load())
	defer func() {
		if !sc.bodyAbort.Load() {
			sc.c.SetReadDeadline(time.Time{})
			pc.c.SetWriteDeadline(time.Time{})
		}
	}()
	chunked := sc.req.Chunked
	const pre = 18 // room for a chunk-size line: 16 hex digits and CRLF
	write := func(out []byte) error {
		pc.c.SetWriteDeadline(time.Now().Add(timeout))
		if sc.bodyAbort.Load() {
			return errBodyAborted
		}
		if _, err := pc.c.Write(out); err != nil {
			switch {
			case sc.bodyAbort.Load():
				return errBodyAborted
			case isTimeout(err):
				return &upstreamError{504, "upstream_timeout", "upstream did not read the request in time", err}
			}
			return &upstreamError{502, "upstream_error", "bad gateway", err}
		}
		return nil
	}
	for {
		var p []byte
		if chunked {
			p = bufp[pre : len(bufp)-2]
		} else {
			p = bufp
		}
		if sc.br.Buffered() == 0 {
			sc.c.SetReadDeadline(time.Now().Add(timeout))
		}
		if sc.bodyAbort.Load() {
			return errBodyAborted
		}
		n, rerr := sc.body.Read(p)
		if n > 0 {
			sc.bodySent += int64(n)
			if maxBody > 0 && sc.bodySent > maxBody {
				return &clientError{errBodyTooLarge}
			}
			out := p[:n]
			if chunked {
				out = appendChunk(bufp, pre, n)
			}
			if err := write(out); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			if chunked {
				return write([]byte("0\r\n\r\n"))
			}
			return nil
		}
		if rerr != nil {
			if sc.bodyAbort.Load() {
				return errBodyAborted
			}
			if isTimeout(rerr) {
				return &clientError{errBodyTimeout}
			}
			return &clientError{rerr}
		}
	}
}

// errBodyAborted: joinBody stopped the body, as the exchange was over;
// the exchange's own outcome is what counts.
var errBodyAborted = errors.New("request body abandoned: the exchange ended")

// appendChunk frames the n payload bytes at buf[pre:] as one chunk, in
// place, and returns the framed bytes.
func appendChunk(buf []byte, pre, n int) []byte {
	var size [16]byte
	hex := strconv.AppendInt(size[:0], int64(n), 16)
	start := pre - 2 - len(hex)
	copy(buf[start:], hex)
	buf[pre-2], buf[pre-1] = '\r', '\n'
	buf[pre+n], buf[pre+n+1] = '\r', '\n'
	return buf[start : pre+n+2]
}

// failed answers an exchange that went wrong before the response head was
// relayed.
func (sc *serverConn) failed(x *exchange, err error) bool {
	var ce *clientError
	var ue *upstreamError
	switch {
	case errors.As(err, &ce) && ce.err == errBodyTooLarge:
		x.info.err, x.info.reason = ce.err, "body_too_large"
		sc.writeError(x, 413, "request body too large (limit "+strconv.FormatInt(x.route.cfg.MaxBody, 10)+" bytes)", true, "")
	case errors.As(err, &ce):
		x.info.err = ce.err
		if errors.Is(ce.err, h1.ErrBadChunk) {
			x.info.reason = "bad_request"
			sc.writeError(x, 400, "malformed chunked request body", true, "")
		} else if ce.err == errBodyTimeout {
			x.info.reason = "body_timeout"
			sc.writeError(x, 408, "request body timed out", true, "")
		} else {
			x.info.reason = "client_gone"
			x.rec.status = statusClientGone
		}
	case errors.As(err, &ue):
		x.info.err, x.info.reason = ue.err, ue.reason
		sc.writeError(x, ue.status, ue.msg, true, "")
	default:
		x.info.err, x.info.reason = err, "upstream_error"
		sc.writeError(x, 502, "bad gateway", true, "")
	}
	return false
}

// relay writes the response head read into sc.resp and streams its body to
// the client, then gives pc back to the pool when it can carry another
// request. It reports whether the client connection can.
func (sc *serverConn) relay(x *exchange, pc *h1Conn, tr *h1Transport) bool {
	defer sc.stopWatch()
	req, resp := &sc.req, &sc.resp
	route := x.route
	// duplex: the answer came while the body was still going out (an
	// early answer, or one that streams back what it reads, or the
	// body's last write still returning). The body goes on while the
	// answer is relayed, and is waited for at the end; if it did not all
	// go out, both connections close then.
	duplex := sc.bodyRunning
	defer sc.joinBody(x, pc, true) // on failures: stop the body
	keep := !req.Close && (duplex || sc.body.Done()) && !sc.s.isClosing()
	chunkOut := false
	b := h1.AppendStatusLine(sc.out[:0], resp.Status, resp.Reason)
	b = route.appendResponseFields(b, resp)
	if sc.s.opts.ExtraHeader != nil {
		b = sc.s.opts.ExtraHeader(b)
	}
	switch {
	case resp.NoBody:
	case resp.ContentLength >= 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, resp.ContentLength, 10)
		b = append(b, "\r\n"...)
	case req.Minor == 1:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		chunkOut = true
	default:
		keep = false // an HTTP/1.0 client learns the end by the close
	}
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	} else if req.Minor == 0 {
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	x.rec.status = resp.Status
	upDone := resp.NoBody
	if !resp.NoBody {
		sc.ub.Reset(pc.br, resp.ContentLength, resp.Chunked)
		if n := resp.ContentLength; n >= 0 && n <= smallBody && int64(pc.br.Buffered()) >= n {
			body, _ := pc.br.Peek(int(n))
			b = append(b, body...)
			pc.br.Discard(int(n))
			x.rec.written = n
			upDone = true
		}
	}
	sc.out = b
	if upDone && !duplex {
		sc.finish(x) // the whole answer is in b: account before sending it
	}
	if _, err := sc.c.Write(b); err != nil {
		x.info.err, x.info.reason = err, "client_gone"
		x.rec.status = statusClientGone
		pc.close()
		return false
	}
	if !upDone {
		if err := sc.relayBody(x, pc, chunkOut); err != nil {
			pc.close()
			return false
		}
	}
	// An upstream that closes after its answer reads no more: the rest
	// of the body is stopped rather than waited for.
	sc.joinBody(x, pc, resp.Close)
	if !sc.body.Done() {
		sc.linger = true // the client may still be sending its body
		keep = false
	}
	if tr == nil || resp.Close || !sc.body.Done() || pc.br.Buffered() > 0 {
		pc.close()
	} else {
		tr.put(pc)
	}
	return keep
}

// relayBody streams the upstream's body to the client. Each write has
// ioTimeout: a client that stops reading does not hold the upstream
// connection for good.
func (sc *serverConn) relayBody(x *exchange, pc *h1Conn, chunkOut bool) error {
	bufp := copyBuffers.Get()
	defer copyBuffers.Put(bufp)
	timeout := time.Duration(ioTimeout.Load())
	defer sc.c.SetWriteDeadline(time.Time{})
	const pre = 18
	for {
		var p []byte
		if chunkOut {
			p = bufp[pre : len(bufp)-2]
		} else {
			p = bufp
		}
		n, rerr := sc.ub.Read(p)
		if n > 0 {
			out := p[:n]
			if chunkOut {
				out = appendChunk(bufp, pre, n)
			}
			sc.c.SetWriteDeadline(time.Now().Add(timeout))
			if _, err := sc.c.Write(out); err != nil {
				x.info.err, x.info.reason = err, "client_gone"
				if isTimeout(err) {
					x.info.reason = "client_timeout"
				}
				return err
			}
			x.rec.written += int64(n)
		}
		if rerr == io.EOF {
			if chunkOut {
				if _, err := sc.c.Write([]byte("0\r\n\r\n")); err != nil {
					x.info.err, x.info.reason = err, "client_gone"
					return err
				}
			}
			return nil
		}
		if rerr != nil {
			x.info.err, x.info.reason = rerr, "upstream_closed"
			if sc.gone.Load() {
				x.info.err, x.info.reason = nil, "aborted" // the client hung up
			}
			return rerr
		}
	}
}

func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// appendUpstreamHead appends the request head sent to u.
func (sc *serverConn) appendUpstreamHead(b []byte, x *exchange, u *upstream, tgt *target) []byte {
	req := &sc.req
	route := x.route
	cfg := route.cfg
	b = append(b, req.Method...)
	b = append(b, ' ')
	b = route.appendTarget(b, x, u, tgt)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	if cfg.HostHeader == config.HostPreserve && tgt.host != "" {
		b = append(b, tgt.host...)
	} else { // asked for, or an HTTP/1.0 client that sent no Host
		b = append(b, u.url.Host...)
	}
	b = append(b, "\r\n"...)
	hasConnection := req.Header.Has("Connection")
	var xffPrior, xfhPrior, xfpPrior bool
	for _, f := range req.Header {
		if dropRequestField(f.Name) {
			if x.info.peerTrusted {
				switch {
				case h1.EqualFold(f.Name, "X-Forwarded-For"):
					xffPrior = true
				case h1.EqualFold(f.Name, "X-Forwarded-Host"):
					xfhPrior = true
				case h1.EqualFold(f.Name, "X-Forwarded-Proto"):
					xfpPrior = true
				}
			}
			continue
		}
		if req.Continue && h1.EqualFold(f.Name, "Expect") {
			continue // sluice answered it; the upstream gets the body at once
		}
		if hasConnection && namedByConnection(req.Header, f.Name) || route.dropsRequestField(f.Name) {
			continue
		}
		b = append(b, f.Name...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "X-Forwarded-For: "...)
	if xffPrior {
		first := true
		for _, f := range req.Header {
			if h1.EqualFold(f.Name, "X-Forwarded-For") {
				if !first {
					b = append(b, ", "...)
				}
				b = append(b, f.Value...)
				first = false
			}
		}
		b = append(b, ", "...)
	}
	b = append(b, sc.peerIP...)
	b = append(b, "\r\nX-Forwarded-Host: "...)
	if v := req.Header.Get("X-Forwarded-Host"); xfhPrior && len(v) > 0 {
		b = append(b, v...)
	} else if tgt.host != "" {
		b = append(b, tgt.host...)
	} else {
		b = append(b, u.url.Host...)
	}
	b = append(b, "\r\nX-Forwarded-Proto: "...)
	if v := req.Header.Get("X-Forwarded-Proto"); xfpPrior && len(v) > 0 {
		b = append(b, v...)
	} else if sc.tls != nil {
		b = append(b, "https"...)
	} else {
		b = append(b, "http"...)
	}
	b = append(b, "\r\n"...)
	for _, kv := range route.reqSet {
		b = append(b, kv.name...)
		b = append(b, ": "...)
		b = append(b, kv.value...)
		b = append(b, "\r\n"...)
	}
	switch {
	case req.Chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case req.ContentLength > 0 || req.Header.Has("Content-Length"):
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// appendTarget appends the path and query sent upstream: the routed path
// (cleaned, prefix stripped when asked) under the upstream's base path.
func (route *Route) appendTarget(b []byte, x *exchange, u *upstream, tgt *target) []byte {
	cfg := route.cfg
	esc := tgt.rawPath
	if x.info.path != x.path {
		// Cleaned for routing: forward what was routed.
		esc = []byte((&url.URL{Path: x.info.path}).EscapedPath())
	}
	if cfg.StripPrefix && cfg.Path != "/" {
		if rest, ok := bytes.CutPrefix(esc, []byte(cfg.Path)); ok && (len(rest) == 0 || rest[0] == '/' || strings.HasSuffix(cfg.Path, "/")) {
			esc = rest
		} else {
			// The prefix came escaped: strip it from the decoded path.
			esc = []byte((&url.URL{Path: strings.TrimPrefix(x.info.path, cfg.Path)}).EscapedPath())
		}
		if len(esc) == 0 || esc[0] != '/' {
			esc = append([]byte("/"), esc...)
		}
	}
	b = appendJoin(b, u.basePath, esc)
	if u.url.RawQuery != "" || tgt.query != nil {
		b = append(b, '?')
		b = append(b, u.url.RawQuery...)
		if u.url.RawQuery != "" && len(tgt.query) > 0 {
			b = append(b, '&')
		}
		b = append(b, tgt.query...)
	}
	return b
}

// appendJoin appends base and p joined by exactly one slash.
func appendJoin(b []byte, base string, p []byte) []byte {
	if base == "" {
		return append(b, p...)
	}
	aslash := strings.HasSuffix(base, "/")
	pslash := len(p) > 0 && p[0] == '/'
	b = append(b, base...)
	switch {
	case aslash && pslash:
		return append(b, p[1:]...)
	case !aslash && !pslash:
		b = append(b, '/')
	}
	return append(b, p...)
}

// appendResponseFields appends the upstream's fields that go to the client:
// all but hop-by-hop ones and the framing (which sluice sets), edited by
// the route's response header rules.
func (route *Route) appendResponseFields(b []byte, resp *h1.Response) []byte {
	hasConnection := resp.Header.Has("Connection")
	hasDate := false
	for _, f := range resp.Header {
		if hopByHop(f.Name) {
			continue
		}
		if len(f.Name) == 4 && h1.EqualFold(f.Name, "Date") {
			hasDate = true
		}
		if h1.EqualFold(f.Name, "Content-Length") && !resp.NoBody {
			continue
		}
		if hasConnection && namedByConnection(resp.Header, f.Name) || route.dropsResponseField(f.Name) {
			continue
		}
		b = append(b, f.Name...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	if !hasDate {
		// A proxy forwarding a response without a date adds one (RFC
		// 9110 6.6.1), as nginx does.
		b = append(b, "Date: "...)
		b = appendDate(b)
		b = append(b, "\r\n"...)
	}
	for _, kv := range route.respSet {
		b = append(b, kv.name...)
		b = append(b, ": "...)
		b = append(b, kv.value...)
		b = append(b, "\r\n"...)
	}
	return b
}

// dropRequestField reports fields never forwarded as they came: hop-by-hop
// ones, the framing and Host (set anew), and X-Forwarded-* (rebuilt).
func dropRequestField(name []byte) bool {
	if hopByHop(name) {
		return true
	}
	switch name[0] | 0x20 {
	case 'c':
		return h1.EqualFold(name, "Content-Length")
	case 'h':
		return h1.EqualFold(name, "Host")
	case 'f':
		return h1.EqualFold(name, "Forwarded")
	case 'x':
		return h1.EqualFold(name, "X-Forwarded-For") || h1.EqualFold(name, "X-Forwarded-Host") || h1.EqualFold(name, "X-Forwarded-Proto")
	}
	return false
}

// hopByHop reports the fields that belong to one connection (RFC 9110
// 7.6.1), Proxy-* included, and empty names.
func hopByHop(name []byte) bool {
	if len(name) == 0 {
		return true
	}
	switch name[0] | 0x20 {
	case 'c':
		return h1.EqualFold(name, "Connection")
	case 'k':
		return h1.EqualFold(name, "Keep-Alive")
	case 'p':
		return len(name) >= 6 && h1.EqualFold(name[:6], "Proxy-")
	case 't':
		return h1.EqualFold(name, "TE") || h1.EqualFold(name, "Trailer") || h1.EqualFold(name, "Transfer-Encoding")
	case 'u':
		return h1.EqualFold(name, "Upgrade")
	}
	return false
}

// namedByConnection reports whether a Connection field of hdr names name.
func namedByConnection(hdr h1.Header, name []byte) bool {
	for _, f := range hdr {
		if !h1.EqualFold(f.Name, "Connection") {
			continue
		}
		v := f.Value
		for len(v) > 0 {
			i := bytes.IndexByte(v, ',')
			var tok []byte
			if i < 0 {
				tok, v = v, nil
			} else {
				tok, v = v[:i], v[i+1:]
			}
			if h1.EqualFold(bytes.TrimSpace(tok), b2s(name)) {
				return true
			}
		}
	}
	return false
}

// writeError writes a short plain-text answer. extra is more header lines.
func (sc *serverConn) writeError(x *exchange, status int, msg string, closeConn bool, extra string) {
	b := h1.AppendStatusLine(sc.out[:0], status, nil)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(msg)+1), 10)
	b = append(b, "\r\nDate: "...)
	b = appendDate(b)
	b = append(b, "\r\n"...)
	b = append(b, extra...)
	if sc.s.opts.ExtraHeader != nil {
		b = sc.s.opts.ExtraHeader(b)
	}
	// A client that asked to close (or an HTTP/1.0 one that did not ask
	// to keep the connection) is answered and closed, as for a relayed
	// answer; an HTTP/1.0 one that did ask is told the connection stays.
	closeConn = closeConn || sc.req.Close
	if closeConn && sc.req.Method != nil && !sc.bodyless() {
		sc.linger = true // the body may still be coming
	}
	if closeConn {
		b = append(b, "Connection: close\r\n"...)
	} else if sc.req.Minor == 0 {
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	if string(sc.req.Method) != "HEAD" {
		b = append(b, msg...)
		b = append(b, '\n')
		x.rec.written = int64(len(msg) + 1)
	}
	sc.out = b
	x.rec.status = status
	sc.finish(x) // before the client can see the answer and ask /metrics
	sc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	sc.c.Write(b)
	sc.c.SetWriteDeadline(time.Time{})
}

// dates caches the formatted Date header for the current second.
var dates atomic.Pointer[dateValue]

type dateValue struct {
	sec int64
	b   []byte
}

func appendDate(b []byte) []byte {
	t := now()
	d := dates.Load()
	if d == nil || d.sec != t.Unix() {
		d = &dateValue{sec: t.Unix(), b: t.UTC().AppendFormat(nil, "Mon, 02 Jan 2006 15:04:05 GMT")}
		dates.Store(d)
	}
	return append(b, d.b...)
}
