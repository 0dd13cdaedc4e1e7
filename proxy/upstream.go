package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/metrics"
)

// downFor is how long an upstream whose dial failed is skipped.
const downFor = 10 * time.Second

// upstream is one backend address. Its health outlives a reload: the same
// URL in the next configuration shares this value.
type upstream struct {
	url       *url.URL
	key       string       // url.String(), for logs
	addr      string       // host:port to dial
	basePath  string       // the URL's escaped path, joined before each request's
	downUntil atomic.Int64 // unix nanoseconds; 0 = up
	metrics   *metrics.Metrics
}

func (u *upstream) up(now time.Time) bool { return u.downUntil.Load() <= now.UnixNano() }

// markDown records a failed dial: the upstream is skipped for downFor.
func (u *upstream) markDown(now time.Time) {
	u.downUntil.Store(now.Add(downFor).UnixNano())
	u.metrics.DialFailed(u.key)
}

// balancer spreads a route's requests over its upstreams in round robin and
// retries an idempotent request once on the next upstream when the dial to
// the first one fails. It is the RoundTripper of the route's ReverseProxy.
type balancer struct {
	upstreams []*upstream
	next      atomic.Uint32
	transport http.RoundTripper
}

// pick returns the next upstream that is up, or the next one in turn when all
// are down: trying beats failing without trying.
func (b *balancer) pick(now time.Time, skip *upstream) *upstream {
	n := uint32(len(b.upstreams))
	if n == 1 {
		return b.upstreams[0]
	}
	start := b.next.Add(1) - 1
	var fallback *upstream
	for i := range n {
		u := b.upstreams[(start+i)%n]
		if u == skip {
			continue
		}
		if u.up(now) {
			return u
		}
		if fallback == nil {
			fallback = u
		}
	}
	if fallback == nil {
		return skip
	}
	return fallback
}

// RoundTrip sends req, whose URL already points at the upstream chosen by the
// route's Rewrite (recorded in the request's info).
func (b *balancer) RoundTrip(req *http.Request) (*http.Response, error) {
	info := infoFrom(req.Context())
	resp, err := b.transport.RoundTrip(req)
	if err == nil || info == nil || info.upstream == nil || !isDialError(err) {
		return resp, err
	}
	now := time.Now()
	info.upstream.markDown(now)
	if len(b.upstreams) == 1 || !retryable(req) {
		return resp, err
	}
	next := b.pick(now, info.upstream)
	if next == info.upstream {
		return resp, err
	}
	// The first attempt never reached the upstream, so a bodiless idempotent
	// request can go to another one unchanged but for its URL.
	retry := req.Clone(req.Context())
	retarget(retry.URL, info.upstream, next)
	info.upstream = next
	info.retried = true
	resp, err = b.transport.RoundTrip(retry)
	if err != nil && isDialError(err) {
		next.markDown(time.Now())
	}
	return resp, err
}

func retryable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// isDialError reports whether err happened while connecting, before any byte
// of the request was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// transportKey identifies transports that can be shared: routes with the same
// timeouts share one connection pool per upstream host.
type transportKey struct {
	connect, responseHeader time.Duration
}

// transports keeps upstream connection pools across reloads, so a reload does
// not throw away warm keep-alive connections. A sweeper goroutine, started
// with the first pool and ended by close, drops idle connections that died.
type transports struct {
	mu        sync.Mutex
	m         map[transportKey]*schemeTransport
	stopSweep chan struct{}
	swept     chan struct{} // closed when the sweeper has returned
}

// sweepEvery is how often dead idle upstream connections are looked for.
const sweepEvery = 15 * time.Second

// schemeTransport sends http:// requests through the lean HTTP/1.1
// transport and https:// ones through net/http's.
type schemeTransport struct {
	h1    *h1Transport
	https *http.Transport
}

func (st *schemeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" {
		return st.h1.RoundTrip(req)
	}
	return st.https.RoundTrip(req)
}

func (t *transports) get(k transportKey) *schemeTransport {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr := t.m[k]; tr != nil {
		return tr
	}
	if t.m == nil {
		t.m = make(map[transportKey]*schemeTransport)
		t.stopSweep, t.swept = make(chan struct{}), make(chan struct{})
		go t.sweep(t.stopSweep, t.swept)
	}
	tr := &schemeTransport{h1: newH1Transport(k), https: newTransport(k)}
	t.m[k] = tr
	return tr
}

func (t *transports) sweep(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			t.mu.Lock()
			pools := make([]*h1Transport, 0, len(t.m))
			for _, tr := range t.m {
				pools = append(pools, tr.h1)
			}
			t.mu.Unlock()
			for _, p := range pools {
				p.sweep(now)
			}
		}
	}
}

// close ends the sweeper and closes every idle connection. Pools created
// afterwards start a new sweeper.
func (t *transports) close() {
	t.mu.Lock()
	stop, swept := t.stopSweep, t.swept
	pools := t.m
	t.m, t.stopSweep, t.swept = nil, nil, nil
	t.mu.Unlock()
	if stop != nil {
		close(stop)
		<-swept
	}
	for _, tr := range pools {
		tr.h1.CloseIdleConnections()
		tr.https.CloseIdleConnections()
	}
}

// newTransport returns a transport tuned for a reverse proxy: no environment
// proxy, no transparent gzip (bodies pass as they are), HTTP/1.1 upstream,
// and an idle pool per upstream large enough for hundreds of concurrent
// requests instead of Go's default of 2.
func newTransport(k transportKey) *http.Transport {
	d := &net.Dialer{Timeout: k.connect, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		MaxIdleConns:          0, // no global cap; the per-host cap bounds it
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   k.connect,
		ResponseHeaderTimeout: k.responseHeader,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
}

// requestInfo is what the forwarding path learns about one request that the
// access log reports: the upstream it went to and why it failed.
type requestInfo struct {
	upstream *upstream
	retried  bool
	// peerTrusted: the TCP peer is a trusted proxy, so its X-Forwarded-*
	// headers are believed.
	peerTrusted bool
	err         error  // the upstream error, if any
	path        string // the cleaned request path that was routed
	reason      string // short word for the access log: "no_route", "upstream_unreachable", ...
}

type infoKey struct{}

func withInfo(ctx context.Context, info *requestInfo) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(infoKey{}).(*requestInfo)
	return info
}

// retarget points u, an upstream request's URL made for from, at to: its
// scheme and host, and its base path in place of from's.
func retarget(u *url.URL, from, to *upstream) {
	u.Scheme, u.Host = to.url.Scheme, to.url.Host
	if prev := from.url.Path; prev != to.url.Path {
		u.Path = singleJoin(to.url.Path, strings.TrimPrefix(u.Path, strings.TrimSuffix(prev, "/")))
		u.RawPath = ""
	}
}

// singleJoin joins two URL paths with exactly one slash between them.
func singleJoin(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}
