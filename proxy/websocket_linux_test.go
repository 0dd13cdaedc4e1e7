//go:build linux

package proxy

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/proxy/splice"
)

// TestWebSocketSessionInline checks that a plain ws:// session through the
// HTTP/1 path reaches the splice with net's own connections on both sides
// (not the raw-I/O wrappers of the handshake), so that it runs inline.
func TestWebSocketSessionInline(t *testing.T) {
	b := startWSBackend(t)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/ws", b.URL)}})
	conn, br, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/ws"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if br != nil {
		ws.PutReader(br)
	}
	if err := wsutil.WriteClientText(conn, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if got, err := wsutil.ReadServerText(conn); err != nil || string(got) != "hi" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	p.h.sessions.mu.Lock()
	n, inline := len(p.h.sessions.m), 0
	for sess := range p.h.sessions.m {
		if sess.Inline() {
			inline++
		}
	}
	p.h.sessions.mu.Unlock()
	if n != 1 || inline != 1 {
		t.Fatalf("%d sessions, %d inline; want 1 and 1", n, inline)
	}
}

// scriptedBackend serves each connection with answer, after reading its
// request head, until the test ends. It returns the backend's URL.
func scriptedBackend(t *testing.T, answer func(c net.Conn, req *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				answer(c, req)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

// TestWebSocketUpstreamWaitsInPoller: the upstream socket of an upgrade
// waits for its answer in the splice's poller, and whatever the answer
// (a late 101 with a frame right behind it, a refusal with a body, none
// in time, nonsense, a hang-up) the registration ends with the exchange or
// with the session: none is left behind.
func TestWebSocketUpstreamWaitsInPoller(t *testing.T) {
	accept := func(key string) string {
		h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		return base64.StdEncoding.EncodeToString(h[:])
	}
	late := func(c net.Conn, req *http.Request) {
		time.Sleep(30 * time.Millisecond)
		f, _ := ws.CompileFrame(ws.NewTextFrame([]byte("right behind the 101")))
		c.Write(append([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: "+accept(req.Header.Get("Sec-WebSocket-Key"))+"\r\n\r\n"), f...))
		io.Copy(io.Discard, c) // until the session closes it
	}
	refuse := func(c net.Conn, req *http.Request) {
		time.Sleep(30 * time.Millisecond)
		io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\nWWW-Authenticate: Basic\r\n\r\n")
		time.Sleep(30 * time.Millisecond)
		io.WriteString(c, "who are y")
	}
	silent := func(c net.Conn, req *http.Request) { io.Copy(io.Discard, c) }
	nonsense := func(c net.Conn, req *http.Request) { io.WriteString(c, "nonsense\r\n\r\n") }
	hangUp := func(c net.Conn, req *http.Request) {}

	tests := []struct {
		name   string
		answer func(net.Conn, *http.Request)
		status int // 101: a session
	}{
		{"late 101 and a frame", late, 101},
		{"refusal with a body", refuse, 401},
		{"no answer in time", silent, 504},
		{"nonsense", nonsense, 502},
		{"hang-up", hangUp, 502},
	}
	waitRegistered := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); splice.Registered() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d sockets still registered with the pollers", what, splice.Registered())
			}
			time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
		}
	}
	waitRegistered("before the test")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := route("/", scriptedBackend(t, tt.answer))
			r.Timeouts.ResponseHeader = 300 * time.Millisecond
			p := startProxy(t, &config.Config{Routes: []config.Route{r}})
			conn, br, _, err := ws.Dial(context.Background(), wsURL(p.URL, "/"))
			if tt.status != 101 {
				if se, ok := err.(ws.StatusError); !ok || int(se) != tt.status {
					t.Fatalf("got %v, want status %d", err, tt.status)
				}
				waitRegistered(tt.name)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var rd io.Reader = conn
			if br != nil {
				rd = br
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := wsutil.ReadServerText(struct {
				io.Reader
				io.Writer
			}{rd, conn})
			if err != nil || string(got) != "right behind the 101" {
				t.Fatalf("the frame behind the 101: %q, %v", got, err)
			}
			if splice.Registered() != 2 {
				t.Errorf("%d sockets registered during the session, want its 2", splice.Registered())
			}
			conn.Close()
			waitRegistered(tt.name)
		})
	}
}
