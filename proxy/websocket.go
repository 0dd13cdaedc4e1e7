package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
	"github.com/sluice-proxy/sluice/proxy/splice"
)

// wsRoute counts a route's WebSocket sessions, in total and per client IP,
// to enforce max_connections and max_connections_per_ip. It is shared by
// every configuration that has a route of the same name, so a reload does not
// reset the counts of sessions that are still open.
type wsRoute struct {
	mu     sync.Mutex
	active int
	perIP  map[string]int
}

// acquire takes a slot for a session from ip, or reports false when a limit
// is reached. A limit of 0 means unlimited.
func (w *wsRoute) acquire(ip string, max, maxPerIP int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if max > 0 && w.active >= max {
		return false
	}
	if maxPerIP > 0 && w.perIP[ip] >= maxPerIP {
		return false
	}
	w.active++
	w.perIP[ip]++
	return true
}

func (w *wsRoute) release(ip string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active--
	if w.perIP[ip]--; w.perIP[ip] <= 0 {
		delete(w.perIP, ip)
	}
}

// originAllowed reports whether the request's Origin is one of allowed
// (already lower-case); an empty list allows any.
func originAllowed(r *http.Request, allowed []string) bool {
	return originAllowedBytes([]byte(r.Header.Get("Origin")), allowed)
}

// serveWebSocket checks a WebSocket upgrade against the route's policy,
// performs the handshake with an upstream and, when the upstream answers
// 101, splices frames between the two until the session ends. A refusal by
// the upstream is relayed to the client as it is.
func (h *Handler) serveWebSocket(x *exchange, r *http.Request) {
	ws := &x.route.cfg.WebSocket
	switch {
	case !ws.Enabled:
		x.info.reason = "websocket_disabled"
		plainError(&x.rec, http.StatusForbidden, "websocket is not enabled on this route")
		return
	case !originAllowed(r, ws.Origins):
		x.info.reason = "origin_not_allowed"
		plainError(&x.rec, http.StatusForbidden, "origin not allowed")
		return
	case h.sessions.isClosing():
		x.info.reason = "shutting_down"
		plainError(&x.rec, http.StatusServiceUnavailable, "shutting down")
		return
	case r.ProtoMajor != 1:
		// HTTP/2 clients use extended CONNECT, which sluice does not offer;
		// browsers then open an HTTP/1.1 connection for WebSockets.
		x.info.reason = "websocket_needs_http1"
		plainError(&x.rec, http.StatusBadRequest, "websocket upgrade needs HTTP/1.1")
		return
	}
	ip := x.clientString()
	if !x.route.ws.acquire(ip, ws.MaxConnections, ws.MaxConnectionsPerIP) {
		x.info.reason = "websocket_connection_limit"
		x.rec.Header().Set("Retry-After", "1")
		plainError(&x.rec, http.StatusServiceUnavailable, "too many websocket connections")
		return
	}
	handedOff := false // once the session runs, it releases the slot
	defer func() {
		if !handedOff {
			x.route.ws.release(ip)
		}
	}()

	r = r.WithContext(withInfo(r.Context(), &x.info))
	backend, br, resp, err := h.dialWebSocket(x, r)
	if err != nil {
		status, reason, msg := classify(r, err)
		x.info.err, x.info.reason = err, reason
		if status == statusClientGone {
			x.rec.status = statusClientGone
			return
		}
		plainError(&x.rec, status, msg)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The upstream said no (401, 403, 404...): relay its answer.
		defer backend.Close()
		relayResponse(&x.rec, resp)
		return
	}
	if !headerHasToken(resp.Header, "Upgrade", "websocket") {
		backend.Close()
		x.info.reason = "upstream_bad_upgrade"
		plainError(&x.rec, http.StatusBadGateway, "upstream switched to something other than websocket")
		return
	}
	handedOff = h.splice(x, r, ip, backend, br, resp)
}

// dialWebSocket connects to an upstream and sends it the upgrade request,
// retrying once on the next upstream when a dial fails. It returns the
// connection, the reader holding whatever the upstream sent after its
// response header, and the response.
func (h *Handler) dialWebSocket(x *exchange, r *http.Request) (net.Conn, *bufio.Reader, *http.Response, error) {
	out := x.route.upgradeRequest(r)
	info := &x.info
	cfg := x.route.cfg
	ctx := r.Context()
	conn, err := dialUpstream(ctx, info.upstream.url, cfg.Timeouts.Connect)
	if err != nil && isDialError(err) {
		info.upstream.markDown(now())
		if next := x.route.bal.pick(now(), info.upstream); next != info.upstream {
			retarget(out.URL, info.upstream, next)
			info.upstream, info.retried = next, true
			if cfg.HostHeader == config.HostUpstream {
				out.Host = next.url.Host
			}
			conn, err = dialUpstream(ctx, next.url, cfg.Timeouts.Connect)
			if err != nil && isDialError(err) {
				next.markDown(now())
			}
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	// The request and the response header must pass within
	// response_header; the client going away ends the wait too.
	if d := cfg.Timeouts.ResponseHeader; d > 0 {
		conn.SetDeadline(time.Now().Add(d))
	}
	stop := context.AfterFunc(r.Context(), func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := out.Write(conn); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("sending the upgrade request: %w", err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		conn.Close()
		if r.Context().Err() != nil {
			return nil, nil, nil, r.Context().Err()
		}
		return nil, nil, nil, fmt.Errorf("reading the upgrade response: %w", err)
	}
	if !stop() {
		conn.Close()
		return nil, nil, nil, context.Canceled
	}
	conn.SetDeadline(time.Time{})
	return conn, br, resp, nil
}

// upgradeRequest builds the request sent to the upstream: the client's
// request with its headers intact (Sec-WebSocket-*, cookies,
// Authorization), rewritten like any forwarded request (path, Host,
// X-Forwarded-*, header edits), minus hop-by-hop headers but for the
// Upgrade and Connection that make it an upgrade.
func (rt *Route) upgradeRequest(r *http.Request) *http.Request {
	out := r.Clone(r.Context())
	out.Body, out.ContentLength, out.Close = nil, 0, false
	removeHopByHop(out.Header)
	for _, name := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(out.Header, name)
	}
	rt.rewrite(&httputil.ProxyRequest{In: r, Out: out})
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", "websocket")
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // keep Request.Write from adding Go's own
	}
	return out
}

// hopHeaders are removed on every hop (RFC 9110 7.6.1), with Proxy-* too.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHop deletes hop-by-hop headers, including every header the
// Connection header names.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
	for name := range h {
		if strings.HasPrefix(name, "Proxy-") {
			delete(h, name)
		}
	}
}

// dialUpstream connects to the upstream at u within timeout (0: no limit
// of our own) or until ctx is done.
func dialUpstream(ctx context.Context, u *url.URL, timeout time.Duration) (net.Conn, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host += ":443"
		} else {
			host += ":80"
		}
	}
	if u.Scheme == "https" {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		d := &tls.Dialer{Config: &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}}
		return d.DialContext(ctx, "tcp", host)
	}
	return dialTCP(ctx, host, timeout)
}

// relayResponse copies an upstream's answer (a refused upgrade) to the
// client.
func relayResponse(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	removeHopByHop(resp.Header)
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, 1<<20))
}

// splice takes over the client connection after the upstream's 101, relays
// that 101 and starts the frame splice on a goroutine of its own, so that
// the request's goroutine returns and net/http lets go of the connection's
// buffers: an idle session then holds no more than its splice. It reports
// whether the session started (and so owns the connection slot of ip).
func (h *Handler) splice(x *exchange, r *http.Request, ip string, backend net.Conn, br *bufio.Reader, resp *http.Response) bool {
	// Register before the client can see the 101, so that a shutdown from
	// then on waits for this session (and its log line).
	if !h.sessions.reserve() {
		backend.Close()
		x.info.reason = "shutting_down"
		plainError(&x.rec, http.StatusServiceUnavailable, "shutting down")
		return false
	}
	started := false
	defer func() {
		if !started {
			h.sessions.unreserve()
		}
	}()
	client, brw, err := http.NewResponseController(&x.rec).Hijack()
	if err != nil {
		backend.Close()
		x.info.err, x.info.reason = err, "hijack_failed"
		plainError(&x.rec, http.StatusInternalServerError, "cannot take over the connection")
		return false
	}
	x.rec.status = http.StatusSwitchingProtocols
	x.websocket = true
	// Hijack cleared the server's deadlines; the session sets its own.
	removeHopByHop(resp.Header)
	var hdr bytes.Buffer
	hdr.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	resp.Header.Write(&hdr)
	hdr.WriteString("\r\n")
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write(hdr.Bytes()); err != nil {
		client.Close()
		backend.Close()
		x.info.err, x.info.reason = err, "client_gone"
		x.websocket = false // no session: log the request
		return false
	}
	client.SetWriteDeadline(time.Time{})

	// Bytes that arrived with the handshakes are frames: hand them over.
	clientBuffered := buffered(brw.Reader)
	backendBuffered := buffered(br)
	ws := &x.route.cfg.WebSocket
	sess := splice.New(client, clientBuffered, backend, backendBuffered,
		spliceOptions(ws, extensionNamed(resp.Header, "permessage-deflate")))
	// Keep only what the session's log line needs, not the request.
	rec := &sessionRecord{
		route: x.route, ip: ip, upstream: x.info.upstream.key,
		method: r.Method, host: r.Host, path: r.URL.Path,
	}
	h.sessions.attach(sess, rec)
	x.route.met.SessionStarted()
	started = true
	h.launch(sess, rec)
	return true
}

// launch starts a registered session; sessionEnded accounts for it when it
// is over. No goroutine waits for it: an idle session holds none.
func (h *Handler) launch(sess *splice.Session, rec *sessionRecord) {
	sess.Start(context.Background(), func(st splice.Stats) { h.sessionEnded(sess, rec, &st) })
}

// spliceOptions are a route's WebSocket limits for one session; allowRSV1
// says permessage-deflate was negotiated.
func spliceOptions(ws *config.WebSocket, allowRSV1 bool) splice.Options {
	return splice.Options{
		MessagesPerSecond: ws.MessagesPerSecond,
		MessageBurst:      ws.MessageBurst,
		BytesPerSecond:    ws.BytesPerSecond,
		MaxMessageSize:    ws.MaxMessageSize,
		CloseOnLimit:      ws.OnLimit == config.OnLimitClose,
		IdleTimeout:       ws.IdleTimeout,
		PingInterval:      ws.PingInterval,
		AllowRSV1:         allowRSV1,
	}
}

// sessionRecord is what a running session keeps of its request.
type sessionRecord struct {
	route              *Route
	ip                 string // client address, for the slot and the log
	upstream           string
	method, host, path string

	// reported is what the metrics have of the session's frames and
	// bytes (in, out): counts go to them as deltas, at each scrape and at
	// the end. Guarded by the registry's mu.
	reported [4]int64
}

// reportTraffic hands the metrics what the session carried since its
// last report. The caller holds h.sessions.mu.
func (h *Handler) reportTraffic(rec *sessionRecord, framesIn, framesOut, bytesIn, bytesOut int64) {
	now := [4]int64{framesIn, framesOut, bytesIn, bytesOut}
	var d [4]int64
	for i := range now {
		d[i] = max(now[i]-rec.reported[i], 0)
	}
	rec.reported = now
	rec.route.met.SessionTraffic(d[0], d[1], d[2], d[3])
}

// flushSessionCounts brings the metrics up to date with the traffic of the
// sessions still running; the metrics call it before each scrape.
func (h *Handler) flushSessionCounts() {
	h.sessions.mu.Lock()
	defer h.sessions.mu.Unlock()
	for s, rec := range h.sessions.m {
		fi, fo, bi, bo := s.Counts()
		h.reportTraffic(rec, fi, fo, bi, bo)
	}
}

// sessionEnded accounts for a session that is over. It runs on the
// session's last goroutine; the session registry counts the session until
// it returns, so CloseSessions waits for it.
func (h *Handler) sessionEnded(sess *splice.Session, rec *sessionRecord, st *splice.Stats) {
	rec.route.ws.release(rec.ip)
	h.sessions.mu.Lock()
	h.reportTraffic(rec, st.FramesIn, st.FramesOut, st.BytesIn, st.BytesOut)
	h.sessions.mu.Unlock()
	rec.route.met.SessionEnded(metrics.Session{Reason: st.Reason, LimitHits: st.LimitHits})
	// Log before deregistering: shutdown waits for the registry to empty
	// and then closes the access log.
	if access := h.access.Load(); access != nil {
		h.logSession(access, rec, st)
	}
	h.sessions.remove(sess)
}

// extensionNamed reports whether a Sec-WebSocket-Extensions header
// negotiates the extension name (parameters follow it after ";").
func extensionNamed(h http.Header, name string) bool {
	for _, v := range h.Values("Sec-Websocket-Extensions") {
		if extensionIn([]byte(v), name) {
			return true
		}
	}
	return false
}

// buffered returns a copy of what br holds unread.
func buffered(br *bufio.Reader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return bytes.Clone(b)
}

// sessions tracks running WebSocket sessions, which http.Server.Shutdown
// does not know about once hijacked.
type sessions struct {
	mu      sync.Mutex
	m       map[*splice.Session]*sessionRecord
	closing bool
	wg      sync.WaitGroup
}

// reserve counts a session about to start, so that shutdown waits for it,
// or reports false when shutdown has begun.
func (ss *sessions) reserve() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closing {
		return false
	}
	ss.wg.Add(1)
	return true
}

// unreserve gives back a reservation that did not become a session.
func (ss *sessions) unreserve() { ss.wg.Done() }

// attach records the reserved session s; if shutdown began since the
// reservation, s is told at once.
func (ss *sessions) attach(s *splice.Session, rec *sessionRecord) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = make(map[*splice.Session]*sessionRecord)
	}
	ss.m[s] = rec
	if ss.closing {
		s.Shutdown()
	}
}

func (ss *sessions) remove(s *splice.Session) {
	ss.mu.Lock()
	delete(ss.m, s)
	ss.mu.Unlock()
	ss.wg.Done()
}

// shutdown sends close 1001 to both ends of every session and waits for
// them to end or ctx to be done.
func (ss *sessions) shutdown(ctx context.Context) error {
	ss.mu.Lock()
	ss.closing = true
	for s := range ss.m {
		s.Shutdown()
	}
	ss.mu.Unlock()
	done := make(chan struct{})
	go func() {
		ss.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (ss *sessions) isClosing() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closing
}

// count returns the number of running sessions.
func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}
