package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/proxy/h1"
)

// rawExchange writes req to a new connection to p and returns everything
// the proxy sends until it closes the connection or goes quiet.
func rawExchange(t *testing.T, p *testProxy, req string) string {
	t.Helper()
	conn, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, req)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(conn)
	return string(b)
}

// TestConnWire checks the HTTP/1 loop's framing on the wire, with an
// upstream that answers each path its own way.
func TestConnWire(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream": // no length: chunked from Go
			w.Write([]byte("part1,"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Write(b)
		default:
			w.Header().Set("Content-Length", "4")
			io.WriteString(w, r.URL.Path[:4])
		}
	}))
	t.Cleanup(up.Close)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	tests := []struct {
		name string
		req  string
		want []string // substrings, in order
		not  []string
	}{
		{
			name: "pipelined requests answered in order",
			req:  "GET /aaaa HTTP/1.1\r\nHost: x\r\n\r\nGET /bbbb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			want: []string{"200 OK", "\r\n\r\n/aaa", "200 OK", "Connection: close", "\r\n\r\n/bbb"},
		},
		{
			name: "HTTP/1.0 gets an unchunked stream and a close",
			req:  "GET /stream HTTP/1.0\r\n\r\n",
			want: []string{"HTTP/1.1 200", "Connection: close", "\r\n\r\npart1,part2"},
			not:  []string{"chunked"},
		},
		{
			name: "HTTP/1.1 gets a chunked stream",
			req:  "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			want: []string{"Transfer-Encoding: chunked", "6\r\npart1,\r\n", "5\r\npart2\r\n0\r\n\r\n"},
		},
		{
			name: "HTTP/1.0 keep-alive",
			req:  "GET /cccc HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /dddd HTTP/1.0\r\n\r\n",
			want: []string{"Connection: keep-alive", "/ccc", "Connection: close", "/ddd"},
		},
		{
			name: "Expect 100-continue",
			req:  "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello",
			want: []string{"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200", "\r\n\r\nhello"},
		},
		{
			name: "chunked upload re-framed",
			req:  "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer-X: 1\r\n\r\n",
			want: []string{"Content-Length: 5", "\r\n\r\nabcde"},
		},
		{
			name: "HEAD keeps the length, sends no body",
			req:  "HEAD /eeee HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			want: []string{"Content-Length: 4\r\n"},
			not:  []string{"/eee"},
		},
		{
			name: "header over 1 MiB",
			req:  "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 1<<20) + "\r\n\r\n",
			want: []string{"HTTP/1.1 431 ", "Connection: close"},
		},
		{
			name: "OPTIONS * is not routed",
			req:  "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []string{"HTTP/1.1 400 "},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkAnswer(t, rawExchange(t, p, tt.req), tt.want, tt.not)
		})
	}
}

// checkAnswer checks that got holds each of want, in order, and none of
// not.
func checkAnswer(t *testing.T, got string, want, not []string) {
	t.Helper()
	rest := got
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("answer lacks %q (in order) in:\n%s", w, got)
		}
		rest = rest[i+len(w):]
	}
	for _, n := range not {
		if strings.Contains(got, n) {
			t.Fatalf("answer has %q:\n%s", n, got)
		}
	}
}

// TestConnClientHangsUp checks that a client hanging up while the upstream
// still thinks ends the upstream request, and is logged as 499.
func TestConnClientHangsUp(t *testing.T) {
	cancelled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(up.Close)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	conn, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET /long-poll HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(300 * time.Millisecond) // past watchAfter
	conn.Close()
	select {
	case <-cancelled:
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream request went on after the client hung up")
	}
	if rec := p.log.lastLog(t, "/long-poll"); rec["status"] != float64(499) || rec["error"] != "client_gone" {
		t.Errorf("access log: %v", rec)
	}
}

// TestConnIdleAndHeaderTimeouts checks timeouts.read_header for the first
// head of a connection (counted from its start, as nginx does: a client
// that connects and sends nothing is let go then) and within any head, and
// timeouts.idle between requests.
func TestConnIdleAndHeaderTimeouts(t *testing.T) {
	up := echoUpstream(t, "a")
	cfg := &config.Config{Routes: []config.Route{route("/", up.URL)}}
	const idle, readHeader = 1500 * time.Millisecond, 300 * time.Millisecond
	cfg.Timeouts.Idle = idle
	cfg.Timeouts.ReadHeader = readHeader
	p := startProxy(t, cfg)
	for _, tt := range []struct {
		name          string
		first, send   string // first: a whole request answered before the wait
		atLeast, upTo time.Duration
	}{
		{"silent new connection", "", "", readHeader / 2, idle * 2 / 3},
		{"slow first head", "", "GET / HTTP/1.1\r\nHost: x\r\n", readHeader / 2, idle * 2 / 3},
		{"idle between requests", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "", idle * 2 / 3, 3 * idle},
		{"slow second head", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET / HTTP/1.1\r\n", readHeader / 2, idle * 2 / 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", p.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			if tt.first != "" {
				io.WriteString(conn, tt.first)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			io.WriteString(conn, tt.send)
			start := time.Now()
			_, err = br.ReadByte()
			d := time.Since(start)
			if err == nil {
				t.Fatal("the proxy answered a request that was never sent")
			}
			if d < tt.atLeast || d > tt.upTo {
				t.Errorf("connection closed after %v, want between %v and %v", d, tt.atLeast, tt.upTo)
			}
		})
	}
}

// BenchmarkUpstreamHead measures the header rewrite of the HTTP/1 path:
// a parsed request head to the head sent upstream (hop-by-hop fields
// dropped, X-Forwarded-* rebuilt, route header rules applied).
func BenchmarkUpstreamHead(b *testing.B) {
	rt := route("/api", "http://127.0.0.1:9/base")
	rt.StripPrefix = true
	rt.Headers.Request.Set = map[string]string{"X-Env": "bench"}
	rt.Headers.Request.Remove = []string{"Cookie"}
	h := New(&config.Config{Routes: []config.Route{rt}}, Options{})
	defer h.Close()
	raw := "GET /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n" +
		"Accept-Encoding: gzip\r\nCookie: a=b\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
	sc := &serverConn{peerIP: "127.0.0.1"}
	if err := h1ReadRequestString(raw, &sc.req); err != nil {
		b.Fatal(err)
	}
	tgt, _ := parseTarget(&sc.req)
	r, _ := h.table.Load().router.Lookup(tgt.host, b2s(tgt.rawPath))
	if r == nil {
		b.Fatal("no route")
	}
	x := &exchange{route: r, path: b2s(tgt.rawPath)}
	x.info.path = x.path
	u := r.bal.upstreams[0]
	buf := sc.appendUpstreamHead(nil, x, u, &tgt)
	if !strings.HasPrefix(string(buf), "GET /base/items?page=2 HTTP/1.1\r\n") || strings.Contains(string(buf), "Cookie") {
		b.Fatalf("head:\n%s", buf)
	}
	b.ReportAllocs()
	for b.Loop() {
		buf = sc.appendUpstreamHead(buf[:0], x, u, &tgt)
	}
}

func h1ReadRequestString(s string, req *h1.Request) error {
	return h1.ReadRequest(bufio.NewReader(strings.NewReader(s)), req, MaxHeaderBytes)
}

// rawUpstream is an upstream that hands each connection to handle, on a
// goroutine of its own, until the test ends.
func rawUpstream(tb testing.TB, handle func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln
}

// TestConnNextUpstreamWhenOneDies has an upstream that takes requests and
// hangs up without answering: a GET goes on to the next upstream, a POST
// (which may have been acted on) is answered 502.
func TestConnNextUpstreamWhenOneDies(t *testing.T) {
	ln := rawUpstream(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n') // the request arrived...
		c.Close()                           // ...and the upstream died
	})
	good := echoUpstream(t, "good")
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", "http://"+ln.Addr().String(), good.URL)}})
	for i := range 4 { // round robin: every other request starts at the dying one
		resp, s := getSeen(t, mustReq("GET", p.URL+"/get", nil))
		if resp.StatusCode != 200 || s.Server != "good" {
			t.Fatalf("GET %d: %d from %q", i, resp.StatusCode, s.Server)
		}
	}
	statuses := map[int]int{}
	for range 4 {
		resp, err := http.Post(p.URL+"/post", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses[resp.StatusCode]++
	}
	if statuses[502] != 2 || statuses[200] != 2 {
		t.Fatalf("POST statuses %v, want two 502 (sent to the dying upstream) and two 200", statuses)
	}
}
