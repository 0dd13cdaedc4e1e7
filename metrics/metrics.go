// Package metrics owns sluice's Prometheus metrics: what is counted, under
// which names and labels. Callers report events through methods; a nil
// *Metrics counts nothing, so tests and embedders may leave it out.
package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds sluice's collectors in a registry of their own.
type Metrics struct {
	reg *prometheus.Registry

	requests     *prometheus.CounterVec   // route, code
	duration     *prometheus.HistogramVec // route
	wsActive     *prometheus.GaugeVec     // route
	wsTotal      *prometheus.CounterVec   // route
	wsFrames     *prometheus.CounterVec   // route, direction
	wsBytes      *prometheus.CounterVec   // route, direction
	wsCloses     *prometheus.CounterVec   // route, reason
	rateLimited  *prometheus.CounterVec   // route, kind
	dialFailures *prometheus.CounterVec   // upstream
	certEvents   *prometheus.CounterVec   // event
	reloads      *prometheus.CounterVec   // result

	onScrape atomic.Pointer[func()]
}

// New returns Metrics registered in a new registry, with the Go runtime and
// process collectors beside them.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_http_requests_total",
			Help: "HTTP requests answered, by route and status code (499: the client left first).",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_http_request_duration_seconds",
			Help:    "Time from request to the end of the response, by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		wsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_websocket_sessions_active",
			Help: "WebSocket sessions open now, by route.",
		}, []string{"route"}),
		wsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_websocket_sessions_total",
			Help: "WebSocket sessions started, by route.",
		}, []string{"route"}),
		wsFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_websocket_frames_total",
			Help: "WebSocket frames, by route and direction (in: client to backend); running sessions count up to the latest scrape.",
		}, []string{"route", "direction"}),
		wsBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_websocket_bytes_total",
			Help: "WebSocket bytes, headers included, by route and direction (in: client to backend); running sessions count up to the latest scrape.",
		}, []string{"route", "direction"}),
		wsCloses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_websocket_session_ends_total",
			Help: "WebSocket sessions ended, by route and reason (close: a close handshake by a peer).",
		}, []string{"route", "reason"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_rate_limited_total",
			Help: "Rate-limit hits, by route and kind (http: a 429; websocket: a throttle wait or limit close).",
		}, []string{"route", "kind"}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_upstream_dial_failures_total",
			Help: "Failed connections to an upstream, which mark it down for 10s.",
		}, []string{"upstream"}),
		certEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_certificate_events_total",
			Help: "Certificate events (obtained, renewed, failed, ...).",
		}, []string{"event"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_config_reloads_total",
			Help: "Configuration reloads, by result (ok, refused).",
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.wsActive, m.wsTotal, m.wsFrames, m.wsBytes,
		m.wsCloses, m.rateLimited, m.dialFailures, m.certEvents, m.reloads,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format, running the
// OnScrape function first.
func (m *Metrics) Handler() http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := m.onScrape.Load(); f != nil {
			(*f)()
		}
		h.ServeHTTP(w, r)
	})
}

// OnScrape sets f to run before each scrape, so that counts kept elsewhere
// (the traffic of running WebSocket sessions) can be brought up to date.
func (m *Metrics) OnScrape(f func()) {
	if m == nil {
		return
	}
	m.onScrape.Store(&f)
}

// codes holds status code labels, so that counting a request does not
// format one.
var codes = func() (c [600]string) {
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeLabel(code int) string {
	if code >= 0 && code < len(codes) {
		return codes[code]
	}
	return strconv.Itoa(code)
}

// Session is what a WebSocket session reports when it ends; its traffic
// goes through Route.SessionTraffic.
type Session struct {
	Reason    string // "" for a close handshake
	LimitHits int64
}

// DialFailed counts a failed connection to upstream.
func (m *Metrics) DialFailed(upstream string) {
	if m == nil {
		return
	}
	m.dialFailures.WithLabelValues(upstream).Inc()
}

// CertEvent counts a certificate event such as "cert_obtained".
func (m *Metrics) CertEvent(event string) {
	if m == nil {
		return
	}
	m.certEvents.WithLabelValues(event).Inc()
}

// Reload counts a configuration reload; ok false means it was refused.
func (m *Metrics) Reload(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "refused"
	}
	m.reloads.WithLabelValues(result).Inc()
}
