// Package proxy owns request handling: the routing table, REST forwarding
// through net/http/httputil.ReverseProxy, the WebSocket handshake and the
// access log. Handler is the http.Handler of the public listeners; Apply
// swaps in a new routing table atomically, so a reload never disturbs a
// request in flight.
package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
	"github.com/sluice-proxy/sluice/proxy/splice"
	"github.com/sluice-proxy/sluice/ratelimit"
)

// now is the clock of the forwarding path.
var now = time.Now

// Options are a Handler's collaborators.
type Options struct {
	// Logger receives operational messages (upstream errors at debug level,
	// reload notes). nil discards them.
	Logger *slog.Logger
	// AccessLog receives one record per request and per WebSocket session.
	// nil turns the access log off.
	AccessLog *slog.Logger
	// Metrics counts requests, sessions and failures. nil counts nothing.
	Metrics *metrics.Metrics
}

// Handler routes and forwards requests. Its zero value is not usable; call
// New.
type Handler struct {
	log      *slog.Logger
	unrouted *metrics.Route              // counts requests that matched no route, as route "none"
	access   atomic.Pointer[slog.Logger] // nil = access log off
	table    atomic.Pointer[table]
	shared   *shared
	sessions sessions
}

// table is one configuration's routing state; immutable once built.
type table struct {
	cfg    *config.Config
	router *Router
}

// shared is state that outlives a reload: upstream health, connection
// pools and WebSocket connection counts, keyed so that the same upstream or
// route name in the next configuration finds them again.
type shared struct {
	mu         sync.Mutex
	upstreams  map[string]*upstream
	wsRoutes   map[string]*wsRoute
	limiters   map[string]*routeLimiter // by route name
	transports transports
	metrics    *metrics.Metrics
}

func (s *shared) upstream(u *url.URL) *upstream {
	key := u.String()
	if up := s.upstreams[key]; up != nil {
		return up
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), map[bool]string{true: "443", false: "80"}[u.Scheme == "https"])
	}
	up := &upstream{url: u, key: key, addr: addr, basePath: u.EscapedPath(), metrics: s.metrics}
	s.upstreams[key] = up
	return up
}

// routeLimiter is a route's per-client limiter, kept across reloads while
// the route keeps its name and its limits.
type routeLimiter struct {
	cfg config.RateLimit
	k   *ratelimit.Keyed
}

func (s *shared) limiter(name string, rl config.RateLimit) *ratelimit.Keyed {
	if rl.RequestsPerSecond <= 0 {
		return nil
	}
	if l := s.limiters[name]; l != nil && l.cfg == rl {
		return l.k
	}
	l := &routeLimiter{cfg: rl, k: ratelimit.NewKeyed(rl.RequestsPerSecond, rl.Burst, 0)}
	s.limiters[name] = l
	return l.k
}

func (s *shared) wsRoute(name string) *wsRoute {
	if w := s.wsRoutes[name]; w != nil {
		return w
	}
	w := &wsRoute{perIP: make(map[string]int)}
	s.wsRoutes[name] = w
	return w
}

// New returns a Handler serving cfg.
func New(cfg *config.Config, opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		log:      opts.Logger,
		unrouted: opts.Metrics.Route("none"),
		shared: &shared{
			upstreams: map[string]*upstream{},
			wsRoutes:  map[string]*wsRoute{},
			limiters:  map[string]*routeLimiter{},
			metrics:   opts.Metrics,
		},
	}
	h.access.Store(opts.AccessLog)
	h.Apply(cfg)
	// Running WebSocket sessions count their traffic at each scrape, not
	// only when they end.
	opts.Metrics.OnScrape(h.flushSessionCounts)
	return h
}

// SetAccessLog replaces the access logger; nil turns the access log off.
func (h *Handler) SetAccessLog(l *slog.Logger) { h.access.Store(l) }

// Apply makes cfg the configuration for every request that starts from now
// on. Requests and WebSocket sessions already running keep the routes (and
// limits) they started with.
func (h *Handler) Apply(cfg *config.Config) {
	sh := h.shared
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Keep the shared state of what the new configuration still names, so
	// health and counters carry over and removed entries are forgotten.
	oldUps, oldWS, oldLim := sh.upstreams, sh.wsRoutes, sh.limiters
	sh.upstreams = make(map[string]*upstream, len(oldUps))
	sh.wsRoutes = make(map[string]*wsRoute, len(oldWS))
	sh.limiters = make(map[string]*routeLimiter, len(oldLim))
	routes := make([]*Route, len(cfg.Routes))
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		for _, u := range rc.Upstreams {
			if up := oldUps[u.String()]; up != nil {
				sh.upstreams[up.key] = up
			}
		}
		if w := oldWS[rc.Name]; w != nil {
			sh.wsRoutes[rc.Name] = w
		}
		if l := oldLim[rc.Name]; l != nil {
			sh.limiters[rc.Name] = l
		}
		routes[i] = newRoute(rc, sh, h.log)
	}
	h.table.Store(&table{cfg: cfg, router: NewRouter(routes)})
}

// Config returns the configuration currently served.
func (h *Handler) Config() *config.Config { return h.table.Load().cfg }

// Close releases idle upstream connections and the goroutine that watches
// them. Requests still running finish normally.
func (h *Handler) Close() { h.shared.transports.close() }

// CloseSessions ends every WebSocket session with close 1001 to both ends,
// refuses new ones, and waits for them to finish or ctx to be done.
func (h *Handler) CloseSessions(ctx context.Context) error { return h.sessions.shutdown(ctx) }

// Sessions returns the number of WebSocket sessions running.
func (h *Handler) Sessions() int { return h.sessions.count() }

// ServeHTTP routes r and forwards it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{start: now(), method: r.Method, host: r.Host, path: r.URL.Path, remote: r.RemoteAddr}
	x.rec.ResponseWriter = w
	x.info.path = cleanPath(r.URL.Path)
	t := h.table.Load()
	x.client, x.info.peerTrusted = clientAddr(r, t.cfg.TrustedProxies)
	route, hostMatched := t.router.Lookup(r.Host, x.info.path)
	// An absolute-form target ("GET http://elsewhere/ HTTP/1.1") is served
	// only when a route names its host: sluice is never an open proxy.
	if route != nil && !hostMatched && r.URL.IsAbs() {
		route = nil
	}
	x.route = route
	// Account for the request even when the response is aborted midway
	// (ReverseProxy panics with http.ErrAbortHandler when a copy fails).
	completed := false
	defer func() {
		if !completed && x.info.reason == "" {
			x.info.reason = "aborted"
		}
		h.finish(x)
	}()
	switch {
	case r.Method == http.MethodConnect:
		// sluice is not a forward proxy: no tunnels through it.
		x.info.reason = "connect_refused"
		x.rec.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		plainError(&x.rec, http.StatusMethodNotAllowed, "CONNECT is not supported")
	case route == nil:
		x.info.reason = "no_route"
		plainError(&x.rec, http.StatusNotFound, "no route for this host and path")
	case isWebSocketUpgrade(r):
		h.serveWebSocket(x, r)
	case !h.allow(x):
		// refused with 429
	default:
		h.forward(x, r)
	}
	completed = true
}

// finish counts the request and writes its access-log record.
func (h *Handler) finish(x *exchange) {
	if !x.websocket {
		met := h.unrouted
		if x.route != nil {
			met = x.route.met
		}
		met.Request(x.rec.status, now().Sub(x.start))
	}
	h.logRequest(x)
}

// allow applies the route's per-client rate limit, answering 429 with
// Retry-After when the client is over it.
func (h *Handler) allow(x *exchange) bool {
	retry, over := h.overLimit(x)
	if !over {
		return true
	}
	x.rec.Header().Set("Retry-After", retry)
	plainError(&x.rec, http.StatusTooManyRequests, "too many requests")
	return false
}

// overLimit takes a token from the route's per-client bucket. When there
// is none it records the refusal and returns the Retry-After value, in
// whole seconds.
func (h *Handler) overLimit(x *exchange) (retryAfter string, over bool) {
	lim := x.route.limiter
	if lim == nil || !x.client.IsValid() {
		return "", false
	}
	ok, retry := lim.Allow(x.client, now())
	if ok {
		return "", false
	}
	x.info.reason = "rate_limited"
	x.route.met.RateLimited()
	return strconv.Itoa(int(retry / time.Second)), true
}

func (h *Handler) forward(x *exchange, r *http.Request) {
	cfg := x.route.cfg
	if cfg.MaxBody > 0 && r.ContentLength > cfg.MaxBody {
		x.info.reason = "body_too_large"
		x.rec.Header().Set("Connection", "close")
		plainError(&x.rec, http.StatusRequestEntityTooLarge, "request body too large")
		return
	}
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// Go's parser rejects ambiguous framing (several Content-Lengths,
		// unknown codings) and reads a request with both Content-Length
		// and chunked by the chunking, as RFC 9112 6.3 says; the body is
		// framed anew upstream, so the two cannot disagree. Closing the
		// client connection after a chunked request (as 6.1 asks when both
		// were sent, which Go no longer lets us see) leaves nothing for a
		// smuggled request to ride on.
		x.rec.Header().Set("Connection", "close")
	}
	if r.Body != nil && r.Body != http.NoBody {
		x.body = countingBody{rc: r.Body, max: cfg.MaxBody}
		r.Body = &x.body
	}
	r = r.WithContext(withInfo(r.Context(), &x.info))
	x.route.rp.ServeHTTP(&x.rec, r)
}

// exchange gathers what the access log needs about one request, in one
// allocation.
type exchange struct {
	start  time.Time
	client netip.Addr // the client's address, from X-Forwarded-For when the peer is trusted
	route  *Route
	// method, host and path are the request's, for the log; on the
	// HTTP/1 path they point into the connection's buffer and are valid
	// only until the exchange is logged.
	method, host, path string
	remote             string // the peer's address, when client is unknown
	rec                recorder
	body               countingBody
	info               requestInfo

	websocket bool // the request became a WebSocket session, which logs itself
	finished  bool // accounted for (HTTP/1 path)
}

func (h *Handler) logRequest(x *exchange) {
	access := h.access.Load()
	if access == nil {
		return
	}
	if x.websocket {
		return // the session logged itself when it ended
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("client", x.clientString()),
		slog.String("method", x.method),
		slog.String("host", x.host),
		slog.String("path", x.path),
		slog.Int("status", x.rec.status),
		slog.Int64("bytes_in", x.body.n),
		slog.Int64("bytes_out", x.rec.written),
		slog.Float64("duration_ms", float64(now().Sub(x.start).Microseconds())/1000),
	)
	if x.route != nil {
		attrs = append(attrs, slog.String("route", x.route.cfg.Name))
	}
	if x.info.upstream != nil {
		attrs = append(attrs, slog.String("upstream", x.info.upstream.key))
	}
	if x.info.retried {
		attrs = append(attrs, slog.Bool("retried", true))
	}
	if x.info.reason != "" {
		errText := x.info.reason
		if x.info.err != nil {
			errText += ": " + x.info.err.Error()
		}
		attrs = append(attrs, slog.String("error", errText))
	}
	access.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
}

// logSession writes the access record of a WebSocket session when it ends.
func (h *Handler) logSession(access *slog.Logger, rec *sessionRecord, st *splice.Stats) {
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("client", rec.ip),
		slog.String("method", rec.method),
		slog.String("host", rec.host),
		slog.String("path", rec.path),
		slog.Int("status", http.StatusSwitchingProtocols),
		slog.String("route", rec.route.cfg.Name),
		slog.String("upstream", rec.upstream),
		slog.Float64("duration_ms", float64(st.Duration.Microseconds())/1000),
		slog.Int64("frames_in", st.FramesIn),
		slog.Int64("frames_out", st.FramesOut),
		slog.Int64("bytes_in", st.BytesIn),
		slog.Int64("bytes_out", st.BytesOut),
		slog.Int("client_close", st.ClientCloseCode),
		slog.Int("backend_close", st.BackendCloseCode),
		slog.String("closed_by", st.ClosedBy),
		slog.Int64("limit_hits", st.LimitHits),
	)
	if st.Reason != "" {
		attrs = append(attrs, slog.String("reason", st.Reason))
	}
	if st.Err != nil {
		attrs = append(attrs, slog.String("error", st.Err.Error()))
	}
	access.LogAttrs(context.Background(), slog.LevelInfo, "websocket", attrs...)
}

func (x *exchange) clientString() string {
	if x.client.IsValid() {
		return x.client.String()
	}
	return clientIP(x.remote)
}

// clientAddr returns the address of the client: the peer, or, when the
// peer is a trusted proxy, the nearest address in X-Forwarded-For that is
// not itself a trusted proxy (read from the right, as each proxy appends).
// peerTrusted reports whether the peer is a trusted proxy.
func clientAddr(r *http.Request, trusted []netip.Prefix) (client netip.Addr, peerTrusted bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr := ap.Addr().Unmap()
	if len(trusted) == 0 || !isTrusted(addr, trusted) {
		return addr, false
	}
	values := r.Header.Values("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		var done bool
		if addr, done = walkForwardedFor(addr, values[i], trusted); done {
			return addr, true
		}
	}
	return addr, true
}

// walkForwardedFor reads one X-Forwarded-For value from the right, starting
// from addr, the nearest hop so far, which is trusted. It returns the
// nearest hop it reached and done when the walk must stop there: at an
// address that is not a trusted proxy, or at garbage (the chain is not
// believed beyond it).
func walkForwardedFor(addr netip.Addr, v string, trusted []netip.Prefix) (netip.Addr, bool) {
	for v != "" {
		j := strings.LastIndexByte(v, ',')
		part := strings.TrimSpace(v[j+1:])
		v = v[:max(j, 0)]
		a, err := netip.ParseAddr(part)
		if err != nil {
			return addr, true
		}
		addr = a.Unmap()
		if !isTrusted(addr, trusted) {
			return addr, true
		}
		if j < 0 {
			break
		}
	}
	return addr, false
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func clientIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}

// recorder remembers the status and body size of a response. It implements
// Unwrap so http.ResponseController can still flush and hijack through it.
type recorder struct {
	http.ResponseWriter
	status  int
	written int64
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts request body bytes and enforces the route's max_body
// for bodies of unknown length.
type countingBody struct {
	rc  io.ReadCloser
	n   int64
	max int64 // 0 = unlimited
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.max > 0 {
		if b.n > b.max {
			return 0, &http.MaxBytesError{Limit: b.max}
		}
		// Read at most one byte past the limit: enough to know it was crossed.
		if rest := b.max - b.n + 1; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if b.max > 0 && b.n > b.max {
		return n, &http.MaxBytesError{Limit: b.max}
	}
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

func isWebSocketUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

// headerHasToken reports whether a comma-separated header contains token,
// case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}
