package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

// route returns a route with the defaults the config loader would fill in.
func route(path string, upstreams ...string) config.Route {
	r := config.Route{
		Name:       path,
		Path:       path,
		HostHeader: config.HostPreserve,
		MaxBody:    10 << 20,
		Timeouts:   config.Timeouts{Connect: 2 * time.Second, ResponseHeader: 5 * time.Second},
		WebSocket:  config.WebSocket{Enabled: true, OnLimit: config.OnLimitThrottle},
	}
	for _, u := range upstreams {
		pu, err := url.Parse(u)
		if err != nil {
			panic(err)
		}
		r.Upstreams = append(r.Upstreams, pu)
	}
	return r
}

// syncBuffer is an access-log sink that tests can read while the proxy
// writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the access-log records written so far.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// lastLog polls until the access log has a record for path (records are
// written after the response, so the client can see the response first).
func (b *syncBuffer) lastLog(t *testing.T, path string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := b.lines(t)
		for i := len(lines) - 1; i >= 0; i-- {
			if lines[i]["path"] == path {
				return lines[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access-log record for %s in %v", path, lines)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testProxy is a Handler served by its ConnServer (the HTTP/1 path the
// public listeners use) on a loopback listener.
type testProxy struct {
	URL      string
	Listener net.Listener
	h        *Handler
	cs       *ConnServer
	log      *syncBuffer
}

func startProxy(t *testing.T, cfg *config.Config) *testProxy {
	t.Helper()
	lb := &syncBuffer{}
	h := New(cfg, Options{AccessLog: slog.New(slog.NewJSONHandler(lb, nil))})
	p := serveConns(t, h)
	p.log = lb
	return p
}

// serveConns serves h's HTTP/1 path on a new loopback listener until the
// test ends.
func serveConns(t testing.TB, h *Handler) *testProxy {
	t.Helper()
	ln := testListener(t)
	cs := h.NewConnServer(ConnOptions{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cs.Serve(ln, nil)
	}()
	p := &testProxy{URL: "http://" + ln.Addr().String(), Listener: ln, h: h, cs: cs}
	t.Cleanup(func() {
		p.Close()
		<-done
		h.Close()
	})
	return p
}

// Close closes the listener and every connection.
func (p *testProxy) Close() { p.cs.Close() }

// echoUpstream answers every request with what it saw, as JSON.
type seen struct {
	Method, Host, Path, RawQuery string
	Header                       http.Header
	Body                         string
	Server                       string
}

func echoUpstream(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", name)
		json.NewEncoder(w).Encode(seen{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header, string(body), name})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func getSeen(t *testing.T, req *http.Request) (*http.Response, seen) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatalf("decoding upstream echo: %v", err)
		}
	}
	return resp, s
}

func TestForwardRouting(t *testing.T) {
	a, b, c := echoUpstream(t, "a"), echoUpstream(t, "b"), echoUpstream(t, "c")
	api := route("/api", a.URL)
	api.StripPrefix = true
	host := route("/", b.URL)
	host.Name = "host"
	host.Hosts = []string{"app.example.com", "*.apps.example.com"}
	root := route("/", c.URL)
	based := route("/based", c.URL+"/base")
	based.StripPrefix = true
	p := startProxy(t, &config.Config{Routes: []config.Route{api, host, root, based}})

	tests := []struct {
		host, target string
		server, path string
		rawQuery     string
	}{
		{"", "/api/users?id=1", "a", "/users", "id=1"},
		{"", "/api", "a", "/", ""},
		{"", "/apix", "c", "/apix", ""},
		{"app.example.com", "/api/x", "b", "/api/x", ""},
		{"x.apps.example.com", "/", "b", "/", ""},
		{"other.example.com", "/y", "c", "/y", ""},
		{"", "/based/z", "c", "/base/z", ""},
		{"", "/static/../api/q", "a", "/q", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.target, func(t *testing.T) {
			req, _ := http.NewRequest("GET", p.URL+tt.target, nil)
			if tt.host != "" {
				req.Host = tt.host
			}
			resp, s := getSeen(t, req)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if s.Server != tt.server || s.Path != tt.path || s.RawQuery != tt.rawQuery {
				t.Fatalf("went to %s%s?%s, want %s%s?%s", s.Server, s.Path, s.RawQuery, tt.server, tt.path, tt.rawQuery)
			}
		})
	}
}

func TestForwardNoRoute(t *testing.T) {
	a := echoUpstream(t, "a")
	r := route("/", a.URL)
	r.Hosts = []string{"only.example.com"}
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})
	resp, err := http.Get(p.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || strings.Count(string(body), "\n") != 1 {
		t.Fatalf("got %d %q %q, want 404 and one plain-text line", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if rec := p.log.lastLog(t, "/x"); rec["status"] != 404.0 || rec["error"] != "no_route" {
		t.Fatalf("access log %v", rec)
	}
}

// TestAbsoluteFormNotProxied checks that sluice is not an open proxy: a
// request naming a host in absolute form goes nowhere unless a route names
// that host.
func TestAbsoluteFormNotProxied(t *testing.T) {
	a := echoUpstream(t, "a")
	named := route("/", a.URL)
	named.Hosts = []string{"named.example.com"}
	named.Name = "named"
	p := startProxy(t, &config.Config{Routes: []config.Route{named, route("/", a.URL)}})
	for _, tt := range []struct {
		target string
		status int
	}{
		{"http://elsewhere.example.net/", 404},
		{"http://named.example.com/", 200},
	} {
		conn, err := net.Dial("tcp", p.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n", tt.target)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("GET %s: status %d, want %d", tt.target, resp.StatusCode, tt.status)
		}
	}
	// No tunnels either, whatever the host.
	for _, host := range []string{"named.example.com:443", "elsewhere.example.net:443"} {
		conn, err := net.Dial("tcp", p.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("CONNECT %s: status %d, want 405", host, resp.StatusCode)
		}
	}
}

func TestForwardHeaders(t *testing.T) {
	a := echoUpstream(t, "a")
	preserve := route("/preserve", a.URL)
	upstreamHost := route("/upstream", a.URL)
	upstreamHost.HostHeader = config.HostUpstream
	edits := route("/edits", a.URL)
	edits.Headers.Request = config.HeaderOps{Set: map[string]string{"X-Api-Key": "secret"}, Remove: []string{"Cookie"}}
	edits.Headers.Response = config.HeaderOps{Set: map[string]string{"X-Frame-Options": "DENY"}, Remove: []string{"X-Upstream"}}
	p := startProxy(t, &config.Config{Routes: []config.Route{preserve, upstreamHost, edits}})
	upHost := strings.TrimPrefix(a.URL, "http://")

	t.Run("host preserve", func(t *testing.T) {
		req, _ := http.NewRequest("GET", p.URL+"/preserve", nil)
		req.Host = "site.example.com"
		_, s := getSeen(t, req)
		if s.Host != "site.example.com" || s.Header.Get("X-Forwarded-Host") != "site.example.com" || s.Header.Get("X-Forwarded-Proto") != "http" {
			t.Fatalf("host %q, X-Forwarded-Host %q, -Proto %q", s.Host, s.Header.Get("X-Forwarded-Host"), s.Header.Get("X-Forwarded-Proto"))
		}
	})
	t.Run("host upstream", func(t *testing.T) {
		req, _ := http.NewRequest("GET", p.URL+"/upstream", nil)
		req.Host = "site.example.com"
		_, s := getSeen(t, req)
		if s.Host != upHost || s.Header.Get("X-Forwarded-Host") != "site.example.com" {
			t.Fatalf("host %q, want %q; X-Forwarded-Host %q", s.Host, upHost, s.Header.Get("X-Forwarded-Host"))
		}
	})
	t.Run("hop-by-hop removed", func(t *testing.T) {
		req, _ := http.NewRequest("GET", p.URL+"/preserve", nil)
		req.Header.Set("Connection", "X-Secret-Hop, keep-alive")
		req.Header.Set("X-Secret-Hop", "1")
		req.Header.Set("Keep-Alive", "timeout=5")
		req.Header.Set("Proxy-Authorization", "Basic eDp5")
		req.Header.Set("Proxy-Custom", "1")
		req.Header.Set("Te", "trailers")
		req.Header.Set("X-Kept", "yes")
		_, s := getSeen(t, req)
		for _, h := range []string{"X-Secret-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Custom", "Te", "Upgrade"} {
			if v := s.Header.Get(h); v != "" {
				t.Errorf("%s forwarded: %q", h, v)
			}
		}
		if s.Header.Get("X-Kept") != "yes" {
			t.Errorf("X-Kept lost")
		}
	})
	t.Run("set and remove", func(t *testing.T) {
		req, _ := http.NewRequest("GET", p.URL+"/edits", nil)
		req.Header.Set("Cookie", "session=1")
		req.Header.Set("X-Api-Key", "client-chosen")
		resp, s := getSeen(t, req)
		if s.Header.Get("Cookie") != "" || s.Header.Get("X-Api-Key") != "secret" {
			t.Errorf("upstream saw Cookie %q X-Api-Key %q", s.Header.Get("Cookie"), s.Header.Get("X-Api-Key"))
		}
		if resp.Header.Get("X-Upstream") != "" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("client saw X-Upstream %q X-Frame-Options %q", resp.Header.Get("X-Upstream"), resp.Header.Get("X-Frame-Options"))
		}
	})
}

func TestForwardedFor(t *testing.T) {
	a := echoUpstream(t, "a")
	tests := []struct {
		name    string
		trusted []netip.Prefix
		xff     string
		want    string
		proto   string
	}{
		{"untrusted replaced", nil, "6.6.6.6", "127.0.0.1", "http"},
		{"untrusted other net", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "6.6.6.6", "127.0.0.1", "http"},
		{"trusted appended", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "203.0.113.7, 10.1.1.1", "203.0.113.7, 10.1.1.1, 127.0.0.1", "https"},
		{"trusted without header", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "", "127.0.0.1", "http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, &config.Config{TrustedProxies: tt.trusted, Routes: []config.Route{route("/", a.URL)}})
			req, _ := http.NewRequest("GET", p.URL+"/", nil)
			if tt.xff != "" {
				req.Header.Set("X-Forwarded-For", tt.xff)
				req.Header.Set("X-Forwarded-Proto", "https")
			}
			_, s := getSeen(t, req)
			if got := s.Header.Get("X-Forwarded-For"); got != tt.want {
				t.Errorf("X-Forwarded-For %q, want %q", got, tt.want)
			}
			if got := s.Header.Get("X-Forwarded-Proto"); got != tt.proto {
				t.Errorf("X-Forwarded-Proto %q, want %q", got, tt.proto)
			}
		})
	}
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestForwardErrors(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	a := echoUpstream(t, "a")

	refused := route("/refused", "http://"+freeAddr(t))
	timeout := route("/slow", slow.URL)
	timeout.Timeouts.ResponseHeader = 200 * time.Millisecond
	small := route("/small", a.URL)
	small.MaxBody = 1000
	p := startProxy(t, &config.Config{Routes: []config.Route{refused, timeout, small}})

	tests := []struct {
		name, method, path string
		body               io.Reader
		chunked            bool
		status             int
		logError           string
	}{
		{"refused", "GET", "/refused", nil, false, 502, "upstream_unreachable"},
		{"no response header", "GET", "/slow", nil, false, 504, "upstream_timeout"},
		{"body over max by length", "POST", "/small", strings.NewReader(strings.Repeat("x", 1001)), false, 413, "body_too_large"},
		{"body over max chunked", "POST", "/small", strings.NewReader(strings.Repeat("x", 5000)), true, 413, "body_too_large"},
		{"body at max", "POST", "/small", strings.NewReader(strings.Repeat("x", 1000)), true, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, p.URL+tt.path, tt.body)
			if tt.chunked {
				req.ContentLength = -1
				req.Body = io.NopCloser(tt.body) // hide the length
			}
			start := time.Now()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tt.status)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
			rec := p.log.lastLog(t, tt.path)
			errText, _ := rec["error"].(string)
			if !strings.HasPrefix(errText, tt.logError) || (tt.logError == "") != (errText == "") {
				t.Fatalf("access log error %q, want %q", errText, tt.logError)
			}
		})
	}
}

func TestRoundRobinAndFailover(t *testing.T) {
	a, b := echoUpstream(t, "a"), echoUpstream(t, "b")
	dead := "http://" + freeAddr(t)
	r := route("/", a.URL, dead, b.URL)
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})

	// Every GET succeeds: the dead upstream is retried on the next one and
	// then skipped while marked down.
	counts := map[string]int{}
	for i := range 12 {
		resp, s := getSeen(t, mustReq("GET", p.URL+"/", nil))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
		counts[s.Server]++
	}
	if counts["a"] < 4 || counts["b"] < 4 {
		t.Fatalf("uneven spread %v", counts)
	}
	retried := 0
	for _, rec := range p.log.lines(t) {
		if rec["retried"] == true {
			retried++
		}
	}
	if retried != 1 {
		t.Fatalf("%d requests were retried, want exactly 1 (then the dead upstream is down for 10s)", retried)
	}

	// A POST with a body is not retried: it fails 502 when it lands on the
	// dead upstream. Reset health so it is tried.
	for _, u := range p.h.shared.upstreams {
		u.downUntil.Store(0)
	}
	statuses := map[int]int{}
	for range 3 {
		resp, err := http.Post(p.URL+"/", "text/plain", strings.NewReader("data"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses[resp.StatusCode]++
	}
	if statuses[502] != 1 || statuses[200] != 2 {
		t.Fatalf("POST statuses %v, want one 502 and two 200", statuses)
	}
}

func mustReq(method, url string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		panic(err)
	}
	return req
}

// TestStreamingLargeBodies sends 20 MiB up and down through the proxy and
// checks the hashes, and that the proxy did not hold the body in memory.
func TestStreamingLargeBodies(t *testing.T) {
	const size = 20 << 20
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "POST":
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		case "GET":
			w.Header().Set("Content-Length", fmt.Sprint(size))
			io.Copy(w, io.LimitReader(newPattern(), size))
		}
	}))
	t.Cleanup(up.Close)
	r := route("/", up.URL)
	r.MaxBody = 0
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})

	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(), size))
	wantSum := fmt.Sprintf("%x", want.Sum(nil))

	var peak atomic.Uint64
	stop := watchHeap(&peak)
	defer stop()
	base := heapInUse()

	// Upload, with unknown length so it is chunked end to end.
	req := mustReq("POST", p.URL+"/", io.NopCloser(io.LimitReader(newPattern(), size)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != fmt.Sprintf("%d %s", size, wantSum) {
		t.Fatalf("upstream received %q, want %d %s", got, size, wantSum)
	}

	// Download.
	resp, err = http.Get(p.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || fmt.Sprintf("%x", h.Sum(nil)) != wantSum {
		t.Fatalf("downloaded %d bytes (err %v) with a different hash", n, err)
	}
	stop()
	// Client, proxy and upstream share this process, so the heap includes
	// all three; a body held whole anywhere would add 20 MiB. Run alone,
	// the growth is a few hundred KiB; after the WebSocket tests of an
	// earlier -count round it has reached 12 MiB (what of, I have not
	// found), so the bound sits between that and a held body.
	if grow := int64(peak.Load()) - int64(base); grow > 16<<20 {
		t.Fatalf("heap grew by %d MiB while streaming 20 MiB bodies", grow>>20)
	}
	t.Logf("heap peak growth while streaming: %d KiB", (int64(peak.Load())-int64(base))>>10)
}

// pattern is an endless deterministic byte stream.
type pattern struct{ off *int }

func newPattern() pattern { return pattern{off: new(int)} }

func (p pattern) Read(b []byte) (int, error) {
	for i := range b {
		o := *p.off + i
		b[i] = byte(o*7 + o>>9)
	}
	*p.off += len(b)
	return len(b), nil
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func watchHeap(peak *atomic.Uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// TestSSEFlushedAtOnce checks that the first event reaches the client while
// the upstream is still streaming.
func TestSSEFlushedAtOnce(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "data: second\n\n")
	}))
	t.Cleanup(up.Close)
	defer close(release)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	resp, err := http.Get(p.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: first\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("first event not delivered while the upstream is still open")
	}
}

// TestApplyUnderLoad swaps the routing table 20 times while clients send
// requests continuously; none may fail.
func TestApplyUnderLoad(t *testing.T) {
	a, b := echoUpstream(t, "a"), echoUpstream(t, "b")
	cfgA := &config.Config{Routes: []config.Route{route("/", a.URL)}}
	cfgB := &config.Config{Routes: []config.Route{route("/", b.URL)}}
	p := startProxy(t, cfgA)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var servers sync.Map
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, s := getSeen(t, mustReq("GET", p.URL+"/x", nil))
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				servers.Store(s.Server, true)
				ok.Add(1)
			}
		})
	}
	for i := range 20 {
		if i%2 == 0 {
			p.h.Apply(cfgB)
		} else {
			p.h.Apply(cfgA)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	_, sawA := servers.Load("a")
	_, sawB := servers.Load("b")
	if failed.Load() != 0 || ok.Load() < 100 || !sawA || !sawB {
		t.Fatalf("%d ok, %d failed, saw a %v b %v", ok.Load(), failed.Load(), sawA, sawB)
	}
	t.Logf("%d requests during 20 reloads, 0 failed", ok.Load())
}

func TestAccessLogRecord(t *testing.T) {
	a := echoUpstream(t, "a")
	r := route("/api", a.URL)
	r.Name = "api"
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})
	resp, err := http.Post(p.URL+"/api/items", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rec := p.log.lastLog(t, "/api/items")
	for k, want := range map[string]any{
		"msg": "request", "client": "127.0.0.1", "method": "POST", "status": 200.0,
		"bytes_in": 5.0, "bytes_out": float64(n), "route": "api", "upstream": a.URL,
	} {
		if rec[k] != want {
			t.Errorf("access log %s = %v, want %v", k, rec[k], want)
		}
	}
	for _, k := range []string{"time", "host", "duration_ms"} {
		if _, ok := rec[k]; !ok {
			t.Errorf("access log lacks %s: %v", k, rec)
		}
	}
}

func BenchmarkProxySmallGET(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello, world\n")
	}))
	defer up.Close()
	h := New(&config.Config{Routes: []config.Route{route("/", up.URL)}}, Options{})
	srv := serveConns(b, h)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(srv.URL + "/small")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

func TestRateLimitPerClient(t *testing.T) {
	a := echoUpstream(t, "a")
	r := route("/", a.URL)
	r.RateLimit = config.RateLimit{RequestsPerSecond: 0.5, Burst: 2}
	p := startProxy(t, &config.Config{
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Routes:         []config.Route{r},
	})
	do := func(xff string) *http.Response {
		req := mustReq("GET", p.URL+"/", nil)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	// The peer is a trusted proxy, so clients are told apart by
	// X-Forwarded-For: each gets its own burst of 2.
	for _, client := range []string{"203.0.113.1", "203.0.113.2, 127.0.0.1"} {
		for i := range 2 {
			if resp := do(client); resp.StatusCode != 200 {
				t.Fatalf("client %s request %d: %d", client, i+1, resp.StatusCode)
			}
		}
		resp := do(client)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("client %s over the limit: %d Retry-After %q, want 429 and 2", client, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	rec := p.log.lastLog(t, "/")
	if rec["status"] != 429.0 || rec["error"] != "rate_limited" || rec["client"] != "203.0.113.2" {
		t.Fatalf("access log %v", rec)
	}
}

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		remote string
		xff    []string
		want   string
	}{
		{"198.51.100.1:5000", []string{"1.2.3.4"}, "198.51.100.1"},            // untrusted peer: its header is ignored
		{"127.0.0.1:5000", []string{"1.2.3.4"}, "1.2.3.4"},                    // trusted peer
		{"127.0.0.1:5000", []string{"6.6.6.6, 1.2.3.4, 10.1.1.1"}, "1.2.3.4"}, // skip trusted hops from the right; the forged left part is not reached
		{"127.0.0.1:5000", []string{"6.6.6.6", "1.2.3.4"}, "1.2.3.4"},         // several header lines
		{"127.0.0.1:5000", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},        // all trusted: the farthest
		{"127.0.0.1:5000", []string{"junk, 1.2.3.4"}, "1.2.3.4"},
		{"127.0.0.1:5000", []string{"1.2.3.4, junk"}, "127.0.0.1"}, // garbage next to us: trust stops
		{"127.0.0.1:5000", nil, "127.0.0.1"},
		{"[::ffff:127.0.0.1]:5000", []string{"2001:db8::1"}, "2001:db8::1"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		r.Header["X-Forwarded-For"] = tt.xff
		if got, _ := clientAddr(r, trusted); got.String() != tt.want {
			t.Errorf("clientAddr(%s, %q) = %s, want %s", tt.remote, tt.xff, got, tt.want)
		}
	}
}

// TestSmuggling sends requests with ambiguous framing straight to the
// socket: each is refused with 400 (or 501 for a coding sluice does not
// decode) and its connection closed, so neither it nor a request hidden
// behind it reaches the upstream. A plain request on the same proxy still
// goes through.
func TestSmuggling(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		paths = append(paths, r.URL.Path+" "+string(b))
		mu.Unlock()
	}))
	t.Cleanup(up.Close)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	tests := []struct {
		name, req string
		status    int
	}{
		{"CL and TE", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"TE and CL", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400},
		{"two lengths", "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400},
		{"unknown coding", "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
		{"chunked not last", "POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
		{"gzip then chunked", "POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"TE twice", "POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"space before colon", "POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
		{"signed length", "POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd", 400},
		{"obs-fold", "POST /g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400},
		{"bad chunk size", "POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", p.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, tt.req)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			// Nothing more on this connection: it is closed.
			if _, err := http.ReadResponse(br, nil); err == nil {
				t.Fatal("a second response came on the same connection")
			}
		})
	}
	resp, err := http.Post(p.URL+"/ok", "text/plain", strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	// A bad chunk is found while the body streams, after the head went
	// up: that upstream request is cut off, never completed.
	paths = slices.DeleteFunc(paths, func(p string) bool { return p == "/h " })
	if len(paths) != 1 || paths[0] != "/ok abc" {
		t.Fatalf("upstream saw %q, want only [\"/ok abc\"]", paths)
	}
}

// TestRetryTakesTheNextUpstreamsPath checks that a request retried on
// another upstream gets that upstream's base path (WebSocket dials retry
// through the same retarget).
func TestRetryTakesTheNextUpstreamsPath(t *testing.T) {
	a := echoUpstream(t, "a")
	r := route("/", "http://"+freeAddr(t)+"/old", a.URL+"/new")
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})
	// Round robin starts at the first upstream, which is dead.
	resp, s := getSeen(t, mustReq("GET", p.URL+"/x?q=1", nil))
	if resp.StatusCode != 200 || s.Path != "/new/x" || s.RawQuery != "q=1" {
		t.Fatalf("retried request: %d to %s?%s, want 200 to /new/x?q=1", resp.StatusCode, s.Path, s.RawQuery)
	}
}
