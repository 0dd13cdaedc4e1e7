package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// scrape returns the sluice_ series lines of m's output.
func scrape(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	lines := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "sluice_") {
			lines[l] = true
		}
	}
	return lines
}

func TestRouteCounts(t *testing.T) {
	m := New()
	api := m.Route("api")
	api.Request(200, 3*time.Millisecond)
	api.Request(200, time.Millisecond)
	api.Request(502, time.Millisecond)
	api.RateLimited()

	ws := m.Route("ws")
	ws.SessionStarted()
	ws.SessionStarted()
	ws.SessionTraffic(3, 2, 60, 40)
	ws.SessionTraffic(1, 0, 10, 0)
	ws.SessionEnded(Session{})
	// A later configuration's Route for the same name counts into the
	// same series: sessions started before a reload end after it.
	again := m.Route("ws")
	again.SessionEnded(Session{Reason: "idle_timeout", LimitHits: 4})
	again.SessionStarted()

	// Routes that counted nothing show no series.
	m.Route("quiet").SessionTraffic(0, 0, 0, 0)

	got := scrape(t, m)
	for _, want := range []string{
		`sluice_http_requests_total{code="200",route="api"} 2`,
		`sluice_http_requests_total{code="502",route="api"} 1`,
		`sluice_http_request_duration_seconds_count{route="api"} 3`,
		`sluice_http_request_duration_seconds_bucket{route="api",le="0.001"} 2`,
		`sluice_rate_limited_total{kind="http",route="api"} 1`,
		`sluice_websocket_sessions_total{route="ws"} 3`,
		`sluice_websocket_sessions_active{route="ws"} 1`,
		`sluice_websocket_frames_total{direction="in",route="ws"} 4`,
		`sluice_websocket_frames_total{direction="out",route="ws"} 2`,
		`sluice_websocket_bytes_total{direction="in",route="ws"} 70`,
		`sluice_websocket_bytes_total{direction="out",route="ws"} 40`,
		`sluice_websocket_session_ends_total{reason="close",route="ws"} 1`,
		`sluice_websocket_session_ends_total{reason="idle_timeout",route="ws"} 1`,
		`sluice_rate_limited_total{kind="websocket",route="ws"} 4`,
	} {
		if !got[want] {
			t.Errorf("missing %s", want)
		}
	}
	for l := range got {
		if strings.Contains(l, `route="quiet"`) {
			t.Errorf("a route that counted nothing shows %s", l)
		}
	}
}

func TestNilRouteCountsNothing(t *testing.T) {
	var m *Metrics
	r := m.Route("api")
	if r != nil {
		t.Fatalf("nil Metrics gave Route %v", r)
	}
	// None of these may panic.
	r.Request(200, time.Millisecond)
	r.RateLimited()
	r.SessionStarted()
	r.SessionTraffic(1, 1, 1, 1)
	r.SessionEnded(Session{Reason: "x"})
}

// BenchmarkRouteSession counts one WebSocket session's events, as the proxy
// does for each: start, traffic, end.
func BenchmarkRouteSession(b *testing.B) {
	r := New().Route("ws")
	b.ReportAllocs()
	for b.Loop() {
		r.SessionStarted()
		r.SessionTraffic(1, 1, 8, 4)
		r.SessionEnded(Session{})
	}
}

// BenchmarkRouteRequest counts one HTTP request (502: a code above 255,
// which as a map key could have cost an allocation).
func BenchmarkRouteRequest(b *testing.B) {
	r := New().Route("api")
	b.ReportAllocs()
	for b.Loop() {
		r.Request(502, time.Millisecond)
	}
}
