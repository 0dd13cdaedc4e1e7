package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
	"github.com/sluice-proxy/sluice/proxy/h1"
	"github.com/sluice-proxy/sluice/ratelimit"
)

// Route is one entry of a routing table, with everything it needs to forward
// requests. Routes are built by Handler.Apply and never change.
type Route struct {
	cfg     *config.Route
	rp      *httputil.ReverseProxy
	bal     *balancer
	ws      *wsRoute         // connection counters, shared with the same-named route of later configs
	limiter *ratelimit.Keyed // per-client request limit; nil = none
	met     *metrics.Route   // its counters; nil = none

	// For the HTTP/1 path (conn.go): the pooled transport when every
	// upstream is plain http (nil: the request goes through ReverseProxy),
	// and the header rules as lists.
	h1                *h1Transport
	reqSet, respSet   []headerKV
	reqDrop, respDrop []string // names removed or replaced
}

type headerKV struct{ name, value string }

func (r *Route) dropsRequestField(name []byte) bool  { return nameIn(name, r.reqDrop) }
func (r *Route) dropsResponseField(name []byte) bool { return nameIn(name, r.respDrop) }

func nameIn(name []byte, names []string) bool {
	for _, n := range names {
		if h1.EqualFold(name, n) {
			return true
		}
	}
	return false
}

// headerLists turns a route's header rules into the lists the HTTP/1 path
// uses: set entries sorted by name (a stable order on the wire), and every
// name that must not pass through as it came.
func headerLists(rules config.HeaderOps) (set []headerKV, drop []string) {
	for name, v := range rules.Set {
		set = append(set, headerKV{name, v})
		drop = append(drop, name)
	}
	slices.SortFunc(set, func(a, b headerKV) int { return strings.Compare(a.name, b.name) })
	return set, append(drop, rules.Remove...)
}

// Name is the route's name as used in logs and metrics.
func (r *Route) Name() string { return r.cfg.Name }

func newRoute(cfg *config.Route, sh *shared, errLog *slog.Logger) *Route {
	r := &Route{cfg: cfg, ws: sh.wsRoute(cfg.Name), limiter: sh.limiter(cfg.Name, cfg.RateLimit),
		met: sh.metrics.Route(cfg.Name)}
	ups := make([]*upstream, len(cfg.Upstreams))
	for i, u := range cfg.Upstreams {
		ups[i] = sh.upstream(u)
	}
	st := sh.transports.get(transportKey{cfg.Timeouts.Connect, cfg.Timeouts.ResponseHeader})
	r.bal = &balancer{upstreams: ups, transport: st}
	r.h1 = st.h1
	for _, u := range ups {
		if u.url.Scheme != "http" {
			r.h1 = nil
		}
	}
	r.reqSet, r.reqDrop = headerLists(cfg.Headers.Request)
	r.respSet, r.respDrop = headerLists(cfg.Headers.Response)
	r.rp = &httputil.ReverseProxy{
		Rewrite:       r.rewrite,
		Transport:     r.bal,
		FlushInterval: cfg.FlushInterval,
		BufferPool:    copyBuffers,
		ErrorLog:      slog.NewLogLogger(errLog.Handler(), slog.LevelDebug),
		ErrorHandler:  r.proxyError,
	}
	if len(cfg.Headers.Response.Set) > 0 || len(cfg.Headers.Response.Remove) > 0 {
		r.rp.ModifyResponse = r.modifyResponse
	}
	return r
}

// rewrite turns the client's request into the upstream request. The
// ReverseProxy has already removed hop-by-hop headers and any Forwarded and
// X-Forwarded-* headers the client sent.
func (r *Route) rewrite(pr *httputil.ProxyRequest) {
	info := infoFrom(pr.In.Context())
	u := r.bal.pick(now(), nil)
	if info != nil {
		info.upstream = u
		if info.path != pr.In.URL.Path {
			// The path was cleaned for routing; forward what was routed.
			pr.Out.URL.Path, pr.Out.URL.RawPath = info.path, ""
		}
	}
	if r.cfg.StripPrefix && r.cfg.Path != "/" {
		stripPrefix(pr.Out.URL, r.cfg.Path)
	}
	pr.SetURL(u.url)
	if r.cfg.HostHeader == config.HostPreserve {
		pr.Out.Host = pr.In.Host
	}
	setForwarded(pr, info != nil && info.peerTrusted)
	h := pr.Out.Header
	for name := range h {
		// Proxy-* headers are meant for this hop (SPEC: hop-by-hop);
		// ReverseProxy drops only the standard ones, and re-adds
		// "TE: trailers", which an HTTP/1.1 upstream has no use for.
		if strings.HasPrefix(name, "Proxy-") || name == "Te" {
			delete(h, name)
		}
	}
	for _, name := range r.cfg.Headers.Request.Remove {
		h.Del(name)
	}
	for name, v := range r.cfg.Headers.Request.Set {
		h.Set(name, v)
	}
}

// setForwarded sets X-Forwarded-For, -Proto and -Host. The client's own
// values are believed only when the peer is a trusted proxy (decided once
// per request, by clientAddr); otherwise they are replaced, so a client
// cannot forge its address.
func setForwarded(pr *httputil.ProxyRequest, peerTrusted bool) {
	in := pr.In
	pr.SetXForwarded() // X-Forwarded-For = peer, -Host = Host, -Proto = http(s)
	if !peerTrusted {
		return
	}
	h := pr.Out.Header
	if prior := in.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		h.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+h.Get("X-Forwarded-For"))
	}
	if v := in.Header.Get("X-Forwarded-Proto"); v != "" {
		h.Set("X-Forwarded-Proto", v)
	}
	if v := in.Header.Get("X-Forwarded-Host"); v != "" {
		h.Set("X-Forwarded-Host", v)
	}
}

// stripPrefix removes prefix, a route path other than "/" that matched on a
// segment boundary, from u's path: "/api/x" -> "/x", "/api" -> "/".
func stripPrefix(u *url.URL, prefix string) {
	u.Path = strings.TrimPrefix(u.Path, prefix)
	if u.Path == "" {
		u.Path = "/"
	}
	if u.RawPath == "" {
		return
	}
	if rest, ok := strings.CutPrefix(u.RawPath, prefix); ok {
		if rest == "" {
			rest = "/"
		}
		u.RawPath = rest
	} else {
		u.RawPath = "" // the prefix itself was escaped; fall back to Path
	}
}

func (r *Route) modifyResponse(resp *http.Response) error {
	h := resp.Header
	for _, name := range r.cfg.Headers.Response.Remove {
		h.Del(name)
	}
	for name, v := range r.cfg.Headers.Response.Set {
		h.Set(name, v)
	}
	return nil
}

// proxyError answers a failed forward with a status that says whose fault it
// was, and records the cause for the access log.
func (r *Route) proxyError(w http.ResponseWriter, req *http.Request, err error) {
	info := infoFrom(req.Context())
	status, reason, msg := classify(req, err)
	if info != nil {
		info.err, info.reason = err, reason
	}
	if status == statusClientGone {
		// Nobody is listening; record it for the log only.
		if rec, ok := w.(*recorder); ok {
			rec.status = statusClientGone
		}
		return
	}
	if status == http.StatusRequestEntityTooLarge {
		w.Header().Set("Connection", "close")
	}
	plainError(w, status, msg)
}

// statusClientGone is logged (as nginx does) when the client went away
// before the response could be sent.
const statusClientGone = 499

func classify(req *http.Request, err error) (status int, reason, msg string) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body too large (limit %d bytes)", tooLarge.Limit)
	case req.Context().Err() != nil && errors.Is(err, context.Canceled):
		return statusClientGone, "client_gone", ""
	case isDialError(err):
		return http.StatusBadGateway, "upstream_unreachable", "upstream unreachable"
	case isTimeout(err):
		return http.StatusGatewayTimeout, "upstream_timeout", "upstream did not answer in time"
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return http.StatusBadGateway, "upstream_closed", "upstream closed the connection"
	}
	return http.StatusBadGateway, "upstream_error", "bad gateway"
}

// plainError writes a short plain-text error line.
func plainError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(msg)+1))
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// copyBuffers lends 32 KiB body-copy buffers to every ReverseProxy, instead
// of allocating one per request.
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

const copyBufferSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[copyBufferSize]byte); ok {
		return v[:]
	}
	return new([copyBufferSize]byte)[:]
}

// Put converts the slice back to its array pointer, which does not allocate
// (a *[]byte would, on every Put).
func (b *bufferPool) Put(buf []byte) {
	if cap(buf) < copyBufferSize {
		return
	}
	b.p.Put((*[copyBufferSize]byte)(buf[:copyBufferSize]))
}
