package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/proxy/h1"
	"github.com/sluice-proxy/sluice/proxy/splice"
)

// serveWebSocket is the WebSocket handshake of the HTTP/1 path: the same
// policy and answers as Handler.serveWebSocket, without building net/http
// values. The upgrade goes up with the client's fields (less hop-by-hop
// ones, plus X-Forwarded-* and the route's header rules), the upstream's
// answer comes back as it is, and after a 101 the connection belongs to
// the splice. It reports whether the client connection can carry another
// request (never, once upgraded).
func (sc *serverConn) serveWebSocket(x *exchange, tgt *target) bool {
	h := sc.s.h
	req := &sc.req
	ws := &x.route.cfg.WebSocket
	keep := sc.bodyless()
	sc.body.Reset(sc.br, req.ContentLength, req.Chunked)
	switch {
	case !ws.Enabled:
		x.info.reason = "websocket_disabled"
		sc.writeError(x, 403, "websocket is not enabled on this route", !keep, "")
		return keep
	case !originAllowedBytes(req.Header.Get("Origin"), ws.Origins):
		x.info.reason = "origin_not_allowed"
		sc.writeError(x, 403, "origin not allowed", !keep, "")
		return keep
	case h.sessions.isClosing():
		x.info.reason = "shutting_down"
		sc.writeError(x, 503, "shutting down", true, "")
		return false
	}
	ip := x.clientString()
	if !x.route.ws.acquire(ip, ws.MaxConnections, ws.MaxConnectionsPerIP) {
		x.info.reason = "websocket_connection_limit"
		sc.writeError(x, 503, "too many websocket connections", !keep, "Retry-After: 1\r\n")
		return keep
	}
	handedOff := false // once the session runs, it releases the slot
	defer func() {
		if !handedOff {
			x.route.ws.release(ip)
		}
	}()
	backend, err := sc.dialWebSocket(x)
	if err != nil {
		x.info.err, x.info.reason = err, "upstream_unreachable"
		sc.writeError(x, 502, "upstream unreachable", true, "")
		return false
	}
	// The upgrade exchange reads and writes raw; the session gets net's
	// own connection (the splice has its own raw path).
	backend = newRawSock(backend)
	// The wait for the answer runs in the splice's poller, which the
	// session then keeps the socket in (when it runs there).
	opt := spliceOptions(ws, false)
	uw := waitInSplice(backend, splice.WouldInline(underlying(sc.c), opt))
	defer uw.release() // unless the session took the registration
	ubr := h1Readers.Get().(*bufio.Reader)
	ubr.Reset(uw)
	err = sc.upgradeExchange(x, tgt, backend, ubr)
	uw.stop()
	if err != nil {
		(&h1Conn{c: backend, br: ubr}).close()
		return sc.failed(x, err)
	}
	resp := &sc.resp
	if resp.Status != 101 {
		// The upstream said no (401, 403, 404...): relay its answer, whose
		// body is read as any other's.
		uw.release()
		return sc.relay(x, &h1Conn{c: backend, br: ubr}, nil)
	}
	if !resp.Header.HasToken("Upgrade", "websocket") {
		(&h1Conn{c: backend, br: ubr}).close()
		x.info.reason = "upstream_bad_upgrade"
		sc.writeError(x, 502, "upstream switched to something other than websocket", true, "")
		return false
	}
	// Register before the client can see the 101, so that a shutdown from
	// then on waits for this session (and its log line).
	if !h.sessions.reserve() {
		(&h1Conn{c: backend, br: ubr}).close()
		x.info.reason = "shutting_down"
		sc.writeError(x, 503, "shutting down", true, "")
		return false
	}
	b := append(sc.out[:0], "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"...)
	b = x.route.appendResponseFields(b, resp)
	b = append(b, "\r\n"...)
	sc.out = b
	sc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := sc.c.Write(b); err != nil {
		h.sessions.unreserve()
		(&h1Conn{c: backend, br: ubr}).close()
		x.info.err, x.info.reason = err, "client_gone"
		x.rec.status = statusClientGone
		return false
	}
	sc.c.SetWriteDeadline(time.Time{})
	x.rec.status = 101
	x.websocket = true // the session logs itself when it ends
	sc.state.Store(connHijacked)
	opt.AllowRSV1 = extensionNamedBytes(resp.Header, "permessage-deflate")
	opt.Backend = uw.take()
	sess := splice.New(underlying(sc.c), buffered(sc.br), underlying(backend), buffered(ubr), opt)
	// The session has copies of what the readers held: they go back to
	// their pools.
	sc.br.Reset(nil)
	readers.Put(sc.br)
	sc.br = nil
	ubr.Reset(nil)
	h1Readers.Put(ubr)
	rec := &sessionRecord{
		route: x.route, ip: ip, upstream: x.info.upstream.key,
		method: "GET", host: x.host, path: x.path,
	}
	if string(req.Method) != rec.method {
		rec.method = string(req.Method)
	}
	rec.host, rec.path = strings.Clone(rec.host), strings.Clone(rec.path)
	h.sessions.attach(sess, rec)
	x.route.met.SessionStarted()
	handedOff = true
	h.launch(sess, rec)
	return false
}

// dialWebSocket connects to the route's next upstream, and to the one
// after it when that dial fails.
func (sc *serverConn) dialWebSocket(x *exchange) (net.Conn, error) {
	route := x.route
	ctx, timeout := context.Background(), route.cfg.Timeouts.Connect
	u := route.bal.pick(now(), nil)
	x.info.upstream = u
	conn, err := dialUpstream(ctx, u.url, timeout)
	if err != nil && isDialError(err) {
		u.markDown(now())
		if next := route.bal.pick(now(), u); next != u {
			x.info.upstream, x.info.retried = next, true
			conn, err = dialUpstream(ctx, next.url, timeout)
			if err != nil && isDialError(err) {
				next.markDown(now())
			}
		}
	}
	return conn, err
}

// upgradeExchange sends the upgrade request on backend and reads the
// answer's head into sc.resp, all within response_header.
func (sc *serverConn) upgradeExchange(x *exchange, tgt *target, backend net.Conn, ubr *bufio.Reader) error {
	if d := x.route.cfg.Timeouts.ResponseHeader; d > 0 {
		backend.SetDeadline(time.Now().Add(d))
	}
	b := sc.appendUpstreamHead(sc.up[:0], x, x.info.upstream, tgt)
	// appendUpstreamHead dropped the client's Connection and Upgrade as
	// hop-by-hop; this hop is an upgrade on purpose.
	b = append(b[:len(b)-2], "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"...)
	sc.up = b
	if _, err := backend.Write(b); err != nil {
		return &upstreamError{502, "upstream_error", "bad gateway", err}
	}
	for {
		err := h1.ReadResponse(ubr, &sc.resp, sc.req.Method, MaxHeaderBytes)
		switch {
		case err == nil:
		case isTimeout(err):
			return &upstreamError{504, "upstream_timeout", "upstream did not answer in time", err}
		case errors.Is(err, h1.ErrBadResponse):
			return &upstreamError{502, "upstream_bad_response", "bad gateway", err}
		default:
			return &upstreamError{502, "upstream_closed", "upstream closed the connection", err}
		}
		if sc.resp.Status >= 200 || sc.resp.Status == 101 {
			break
		}
	}
	backend.SetDeadline(time.Time{})
	return nil
}

// originAllowedBytes is originAllowed for a raw Origin value.
func originAllowedBytes(origin []byte, allowed []string) bool {
	if len(allowed) == 0 {
		return true
	}
	o := bytes.ToLower(origin)
	for _, a := range allowed {
		if string(o) == a {
			return true
		}
	}
	return false
}

// extensionNamedBytes is extensionNamed for raw fields.
func extensionNamedBytes(hdr h1.Header, name string) bool {
	for _, f := range hdr {
		if h1.EqualFold(f.Name, "Sec-WebSocket-Extensions") && extensionIn(f.Value, name) {
			return true
		}
	}
	return false
}

// extensionIn reports whether the Sec-WebSocket-Extensions value v
// negotiates the extension name (parameters follow it after ";").
func extensionIn(v []byte, name string) bool {
	for ext := range bytes.SplitSeq(v, []byte(",")) {
		n, _, _ := bytes.Cut(ext, []byte(";"))
		if h1.EqualFold(bytes.TrimSpace(n), name) {
			return true
		}
	}
	return false
}
