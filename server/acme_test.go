package server

import (
	"context"
	cryptotls "crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/sluice-proxy/sluice/internal/pebbletest"
)

// TestACMEEndToEnd runs sluice in acme mode against Pebble with challenge
// validation on: sluice obtains a certificate for the name its route
// configures, and a client that trusts only Pebble's root completes an
// HTTPS request and a wss session through it.
func TestACMEEndToEnd(t *testing.T) {
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	_, hp, _ := net.SplitHostPort(httpAddr)
	_, tp, _ := net.SplitHostPort(httpsAddr)
	httpPort, _ := strconv.Atoi(hp)
	tlsPort, _ := strconv.Atoi(tp)
	pebble := pebbletest.Start(t, httpPort, tlsPort)

	echo := wsEchoUpstream(t)
	s := start(t, load(t, fmt.Sprintf(`
listen: {http: %q, https: %q}
tls:
  mode: acme
  ca: %s
  ca_root: %s
  email: ops@acme.example
  storage: %s
admin: {listen: off}
log: {access: off}
routes:
  - hosts: [acme.example]
    upstreams: [%s]
`, httpAddr, httpsAddr, pebble.Directory, pebble.CARoot, t.TempDir(), echo)))

	tlsConf := &cryptotls.Config{RootCAs: pebble.Roots, ServerName: "acme.example"}
	deadline := time.Now().Add(45 * time.Second)
	for {
		conn, err := cryptotls.Dial("tcp", s.Addr("https"), tlsConf)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for acme.example from pebble: %v\n%s", err, pebble.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}

	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, s.Addr("https"))
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &cryptotls.Config{RootCAs: pebble.Roots}, DialContext: dial, ForceAttemptHTTP2: true,
	}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://acme.example/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "plain /hello" || resp.ProtoMajor != 2 {
		t.Fatalf("https: %d %q over %s", resp.StatusCode, body, resp.Proto)
	}

	d := ws.Dialer{TLSConfig: &cryptotls.Config{RootCAs: pebble.Roots}, NetDial: dial}
	conn, _, _, err := d.Dial(context.Background(), "wss://acme.example/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := wsutil.WriteClientText(conn, []byte("over wss")); err != nil {
		t.Fatal(err)
	}
	if got, err := wsutil.ReadServerText(conn); err != nil || string(got) != "over wss" {
		t.Fatalf("wss echo: %q %v", got, err)
	}

	// A name no route configures gets no certificate.
	if c, err := cryptotls.Dial("tcp", s.Addr("https"), &cryptotls.Config{RootCAs: pebble.Roots, ServerName: "evil.example"}); err == nil {
		c.Close()
		t.Fatal("handshake for an unconfigured name succeeded")
	}
}

// wsEchoUpstream serves "plain PATH" to plain requests and echoes
// WebSocket messages.
func wsEchoUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "plain "+r.URL.Path)
			return
		}
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			msg, op, err := wsutil.ReadClientData(conn)
			if err != nil || wsutil.WriteServerMessage(conn, op, msg) != nil {
				return
			}
		}
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}
