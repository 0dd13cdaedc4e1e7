//go:build linux

package proxy

import (
	"context"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/sluice-proxy/sluice/config"
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
