package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
)

// wsBackend is a WebSocket echo server that reports the headers of each
// handshake it saw on seenc, negotiates the "chat" subprotocol when
// offered, refuses requests carrying "X-Refuse" with 401, and answers a
// text message "whoami" with the handshake headers as JSON.
type wsBackend struct {
	*httptest.Server
	mu      sync.Mutex
	headers []http.Header
	closed  chan ws.StatusCode // close codes received from the proxy
}

func startWSBackend(t *testing.T) *wsBackend {
	t.Helper()
	b := &wsBackend{closed: make(chan ws.StatusCode, 16)}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Refuse") != "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="test"`)
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		b.mu.Lock()
		b.headers = append(b.headers, r.Header.Clone())
		b.mu.Unlock()
		u := ws.HTTPUpgrader{
			Protocol: func(p string) bool { return p == "chat" },
		}
		conn, _, _, err := u.Upgrade(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			msg, op, err := wsutil.ReadClientData(conn)
			if err != nil {
				var ce wsutil.ClosedError
				if ok := asClosed(err, &ce); ok {
					b.closed <- ce.Code
				}
				return
			}
			if op == ws.OpText && string(msg) == "whoami" {
				msg, _ = json.Marshal(r.Header)
			}
			if err := wsutil.WriteServerMessage(conn, op, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(b.Close)
	return b
}

func asClosed(err error, ce *wsutil.ClosedError) bool {
	c, ok := err.(wsutil.ClosedError)
	if ok {
		*ce = c
	}
	return ok
}

func wsURL(httpURL, path string) string { return "ws" + strings.TrimPrefix(httpURL, "http") + path }

func TestWebSocketEcho(t *testing.T) {
	b := startWSBackend(t)
	r := route("/ws", b.URL)
	r.Name = "ws"
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})

	d := ws.Dialer{
		Protocols: []string{"other", "chat"},
		Header: ws.HandshakeHeaderHTTP(http.Header{
			"Cookie":        {"session=42"},
			"Authorization": {"Bearer token"},
			"Origin":        {"https://app.example.com"},
		}),
	}
	conn, br, hs, err := d.Dial(context.Background(), wsURL(p.URL, "/ws/room?id=7"))
	if err != nil {
		t.Fatal(err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	if hs.Protocol != "chat" {
		t.Fatalf("negotiated subprotocol %q, want chat", hs.Protocol)
	}
	for _, msg := range []string{"hello", strings.Repeat("x", 70000)} {
		if err := wsutil.WriteClientText(conn, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := wsutil.ReadServerText(conn)
		if err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: got %d bytes, %v", len(msg), len(got), err)
		}
	}
	if err := wsutil.WriteClientText(conn, []byte("whoami")); err != nil {
		t.Fatal(err)
	}
	raw, err := wsutil.ReadServerText(conn)
	if err != nil {
		t.Fatal(err)
	}
	var seenHdr http.Header
	json.Unmarshal(raw, &seenHdr)
	for name, want := range map[string]string{
		"Cookie": "session=42", "Authorization": "Bearer token", "Origin": "https://app.example.com",
		"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "Sec-Websocket-Protocol": "other, chat",
		"Upgrade": "websocket", "Sec-Websocket-Version": "13",
	} {
		if got := seenHdr.Get(name); got != want {
			t.Errorf("backend saw %s %q, want %q", name, got, want)
		}
	}
	if seenHdr.Get("Sec-Websocket-Key") == "" {
		t.Error("Sec-WebSocket-Key not forwarded")
	}

	// A close from the client passes through with its code and reason.
	wsutil.WriteClientMessage(conn, ws.OpClose, ws.NewCloseFrameBody(4001, "bye"))
	select {
	case code := <-b.closed:
		if code != 4001 {
			t.Fatalf("backend got close %d, want 4001", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend got no close frame")
	}
	conn.Close()
	rec := p.log.lastLog(t, "/ws/room")
	for k, want := range map[string]any{"msg": "websocket", "status": 101.0, "route": "ws", "client_close": 4001.0, "closed_by": "client"} {
		if rec[k] != want {
			t.Errorf("session log %s = %v, want %v (%v)", k, rec[k], want, rec)
		}
	}
	if rec["frames_in"].(float64) < 4 || rec["bytes_in"].(float64) < 70000 {
		t.Errorf("session log counts %v", rec)
	}
}

// TestWebSocketFirstFrameWithHandshake sends the first frame in the same
// write as the upgrade request: those bytes sit in the server's buffer at
// hijack time and must not be lost.
func TestWebSocketFirstFrameWithHandshake(t *testing.T) {
	b := startWSBackend(t)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", b.URL)}})
	conn, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var frame strings.Builder
	f := ws.NewTextFrame([]byte("early"))
	f = ws.MaskFrameInPlace(f)
	fb, _ := ws.CompileFrame(f)
	frame.Write(fb)
	req := "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write([]byte(req + frame.String())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := wsutil.ReadServerText(struct {
		io.Reader
		io.Writer
	}{br, conn})
	if err != nil || string(got) != "early" {
		t.Fatalf("echo of the early frame: %q %v", got, err)
	}
}

func TestWebSocketRefusals(t *testing.T) {
	b := startWSBackend(t)
	open := route("/open", b.URL)
	strict := route("/strict", b.URL)
	strict.WebSocket.Origins = []string{"https://good.example"}
	disabled := route("/disabled", b.URL)
	disabled.WebSocket.Enabled = false
	limited := route("/limited", b.URL)
	limited.WebSocket.MaxConnections = 1
	perIP := route("/perip", b.URL)
	perIP.WebSocket.MaxConnectionsPerIP = 1
	dead := route("/dead", "http://"+freeAddr(t))
	p := startProxy(t, &config.Config{Routes: []config.Route{open, strict, disabled, limited, perIP, dead}})

	// Hold one session open on each limited route.
	for _, path := range []string{"/limited", "/perip"} {
		c, _, _, err := ws.Dial(context.Background(), wsURL(p.URL, path))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	tests := []struct {
		path   string
		header http.Header
		status int
	}{
		{"/open", http.Header{"X-Refuse": {"1"}}, 401}, // the upstream's refusal, relayed
		{"/strict", http.Header{"Origin": {"https://evil.example"}}, 403},
		{"/strict", nil, 403},
		{"/disabled", nil, 403},
		{"/limited", nil, 503},
		{"/perip", nil, 503},
		{"/dead", nil, 502},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(tt.header)}
			c, _, _, err := d.Dial(context.Background(), wsURL(p.URL, tt.path))
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if se, ok := err.(ws.StatusError); !ok || int(se) != tt.status {
				t.Fatalf("got %v, want status %d", err, tt.status)
			}
		})
	}
	// The relayed refusal keeps the upstream's headers.
	req, _ := http.NewRequest("GET", p.URL+"/open", nil)
	req.Header = http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "X-Refuse": {"1"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Version": {"13"}}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("Www-Authenticate") == "" {
		t.Fatalf("refusal relayed as %d %v", resp.StatusCode, resp.Header)
	}
	// A session that ends frees its slot.
	c, _, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/open"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestWebSocketReloadAndShutdown checks that a reload leaves a running
// session alone, and that shutdown closes it with 1001 at both ends.
func TestWebSocketReloadAndShutdown(t *testing.T) {
	b := startWSBackend(t)
	r := route("/", b.URL)
	r.WebSocket.MessagesPerSecond = 1000
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})
	conn, _, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := func(msg string) error {
		if err := wsutil.WriteClientText(conn, []byte(msg)); err != nil {
			return err
		}
		got, err := wsutil.ReadServerText(conn)
		if err == nil && string(got) != msg {
			err = fmt.Errorf("echo %q, want %q", got, msg)
		}
		return err
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	// The new config points elsewhere and disables WebSocket; the running
	// session keeps its route.
	other := route("/", "http://"+freeAddr(t))
	other.WebSocket.Enabled = false
	p.h.Apply(&config.Config{Routes: []config.Route{other}})
	if err := echo("after reload"); err != nil {
		t.Fatalf("session after reload: %v", err)
	}
	if p.h.Sessions() != 1 {
		t.Fatalf("%d sessions, want 1", p.h.Sessions())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.h.CloseSessions(ctx) }()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	frame, err := ws.ReadFrame(conn)
	if err != nil || frame.Header.OpCode != ws.OpClose {
		t.Fatalf("client got %v %v, want a close frame", frame.Header.OpCode, err)
	}
	if code, _ := ws.ParseCloseFrameData(frame.Payload); code != ws.StatusGoingAway {
		t.Fatalf("client got close %d, want 1001", code)
	}
	select {
	case code := <-b.closed:
		if code != ws.StatusGoingAway {
			t.Fatalf("backend got close %d, want 1001", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend got no close frame")
	}
	if err := <-done; err != nil {
		t.Fatalf("CloseSessions: %v", err)
	}
	p.h.Apply(&config.Config{Routes: []config.Route{r}})
	if _, _, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/")); err != ws.StatusError(503) {
		t.Fatalf("a new session after shutdown: %v, want 503", err)
	}
}

// TestWebSocketMetricsWhileRunning checks that a running session's frames
// and bytes reach /metrics at each scrape, not only when it ends, and that
// the end adds only the rest.
func TestWebSocketMetricsWhileRunning(t *testing.T) {
	b := startWSBackend(t)
	r := route("/ws", b.URL)
	r.Name = "ws"
	m := metrics.New()
	h := New(&config.Config{Routes: []config.Route{r}}, Options{Metrics: m})
	p := serveConns(t, h)
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	conn, br, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/ws"))
	if err != nil {
		t.Fatal(err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	for range 3 {
		if err := wsutil.WriteClientText(conn, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := wsutil.ReadServerText(conn); err != nil {
			t.Fatal(err)
		}
	}
	// 3 frames each way, 11 bytes each in (2 header + 4 mask + 5), 7 out.
	body := scrape()
	for _, want := range []string{
		`sluice_websocket_frames_total{direction="in",route="ws"} 3`,
		`sluice_websocket_frames_total{direction="out",route="ws"} 3`,
		`sluice_websocket_bytes_total{direction="in",route="ws"} 33`,
		`sluice_websocket_bytes_total{direction="out",route="ws"} 21`,
		`sluice_websocket_sessions_active{route="ws"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("while running, /metrics lacks %s", want)
		}
	}
	conn.Close() // the backend gets 1001; no frame came from the client
	deadline := time.Now().Add(5 * time.Second)
	for h.Sessions() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	body = scrape()
	for _, want := range []string{
		`sluice_websocket_frames_total{direction="in",route="ws"} 3`,
		`sluice_websocket_bytes_total{direction="in",route="ws"} 33`,
		`sluice_websocket_sessions_active{route="ws"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("after the end, /metrics lacks %s", want)
		}
	}
}
