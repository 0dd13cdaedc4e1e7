package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

// countingUpstream counts the connections it accepted.
func countingUpstream(t *testing.T, h http.HandlerFunc, idle time.Duration) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(h)
	up.Config.IdleTimeout = idle
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	return up, &conns
}

func TestH1TransportReusesConnections(t *testing.T) {
	up, conns := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			io.WriteString(w, "body of "+r.URL.Path)
		}
	}, 0)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	for i, tt := range []struct{ method, path, body string }{
		{"GET", "/a", ""}, {"HEAD", "/a", ""}, {"POST", "/b", "payload"}, {"GET", "/empty", ""},
		{"PUT", "/c", strings.Repeat("x", 100000)}, {"GET", "/d", ""},
	} {
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		resp, err := client.Do(mustReq(tt.method, p.URL+tt.path, body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "body of " + tt.path
		if tt.method == "HEAD" || tt.path == "/empty" {
			want = ""
		}
		if resp.StatusCode >= 300 || string(b) != want {
			t.Fatalf("request %d %s %s: %d %q", i, tt.method, tt.path, resp.StatusCode, b)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 6 sequential requests, want 1", n)
	}
}

// TestH1TransportStaleConnection has the upstream close idle connections
// quickly: a request after that, even a POST that cannot be resent, must
// not fail on the dead pooled connection.
func TestH1TransportStaleConnection(t *testing.T) {
	up, conns := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+string(b))
	}, 50*time.Millisecond)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	for i := range 3 {
		resp, err := http.Post(p.URL+"/", "text/plain", strings.NewReader("data"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "POST data" {
			t.Fatalf("POST %d after the upstream closed the idle connection: %d %q", i, resp.StatusCode, b)
		}
		time.Sleep(150 * time.Millisecond) // the upstream's idle timeout passes
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d upstream connections, want 3 (each idle one closed by the upstream)", n)
	}
}

// TestH1TransportClientGoneMidBody checks that a response cut off by the
// client does not leave its connection in the pool.
func TestH1TransportClientGoneMidBody(t *testing.T) {
	release := make(chan struct{})
	up, conns := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			w.Write([]byte(strings.Repeat("x", 1000)))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "fine")
	}, 0)
	defer close(release)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	conn, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 100)
	if _, err := io.ReadAtLeast(conn, buf, 50); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// The proxy has finished with it, and says it was cut off: "aborted"
	// when the hang-up watch saw it while the upstream was waited on, or
	// "client_gone" when a write met the reset first (the upstream's
	// 1000 bytes may arrive in two reads).
	rec := p.log.lastLog(t, "/slow")
	if e, _ := rec["error"].(string); e != "aborted" && !strings.HasPrefix(e, "client_gone") {
		t.Errorf("access log of the cut-off response: %v", rec)
	}
	resp, err := http.Get(p.URL + "/next")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "fine" || conns.Load() != 2 {
		t.Fatalf("after a cut-off response: %q over %d upstream connections, want fine over 2", b, conns.Load())
	}
}

// TestH1TransportSweep checks that pooled connections the upstream closed
// are dropped by the sweeper without waiting for the next request, and
// that an idle connection holds no buffers.
func TestH1TransportSweep(t *testing.T) {
	up, _ := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}, 50*time.Millisecond)
	tr := newH1Transport(transportKey{connect: time.Second})
	defer tr.CloseIdleConnections()
	req := mustReq("GET", up.URL+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	idle := func() (n int, buffered bool) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, list := range tr.idle {
			for _, pc := range list {
				n++
				buffered = buffered || pc.br != nil || pc.bw != nil
			}
		}
		return n, buffered
	}
	if n, buffered := idle(); n != 1 || buffered {
		t.Fatalf("after one request: %d idle connections (holding buffers: %v), want 1 without", n, buffered)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.sweep(time.Now())
		if n, _ := idle(); n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the connection the upstream closed is still pooled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowBody yields n chunks of data, one every gap.
type slowBody struct {
	n   int
	gap time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.gap)
	b.n--
	return copy(p, "chunk"), nil
}

// TestH1TransportSlowUpload checks that response_header counts from the
// end of the request: an upload slower than it still gets its answer.
func TestH1TransportSlowUpload(t *testing.T) {
	up, _ := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, string(b))
	}, 0)
	rt := route("/", up.URL)
	rt.Timeouts.ResponseHeader = 200 * time.Millisecond
	p := startProxy(t, &config.Config{Routes: []config.Route{rt}})
	req := mustReq("POST", p.URL+"/", &slowBody{n: 6, gap: 100 * time.Millisecond})
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != strings.Repeat("chunk", 6) {
		t.Fatalf("600ms upload with a 200ms response_header: %d %q", resp.StatusCode, b)
	}
}
