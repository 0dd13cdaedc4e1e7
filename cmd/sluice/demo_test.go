package main

import (
	"bufio"
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// TestDemo runs `sluice demo` as a newcomer would and tries what it prints:
// the REST echo, the page, a wss echo and the event stream, all through
// TLS from the demo's own CA; plain http redirects.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	httpsAddr, httpAddr, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	p := startSluice(t, "demo", "-https", httpsAddr, "-http", httpAddr, "-admin", adminAddr, "-dir", dir)
	var root string
	waitFor(t, "the demo to print its URLs", 20*time.Second, func() bool {
		m := regexp.MustCompile(`--cacert (\S+)`).FindStringSubmatch(p.stdout.String())
		if m != nil {
			root = m[1]
		}
		return m != nil && strings.Contains(p.stderr.String(), "sluice started")
	})
	if root != filepath.Join(dir, "data", "ca", "root.crt") {
		t.Fatalf("CA root printed as %q", root)
	}
	pemBytes, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tlsConf := &cryptotls.Config{RootCAs: pool}
	_, port, _ := net.SplitHostPort(httpsAddr)
	base := "https://localhost:" + port
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
	}
	client := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: tlsConf, DialContext: dial, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
	defer client.CloseIdleConnections()

	resp, err := client.Get(base + "/api/hello?x=1")
	if err != nil {
		t.Fatal(err)
	}
	var echoed struct {
		Method, Path, Query string
		Headers             map[string][]string
	}
	json.NewDecoder(resp.Body).Decode(&echoed)
	resp.Body.Close()
	if resp.StatusCode != 200 || echoed.Path != "/api/hello" || echoed.Query != "x=1" || echoed.Headers["X-Forwarded-Proto"][0] != "https" {
		t.Fatalf("REST echo: %d %+v", resp.StatusCode, echoed)
	}

	req, _ := http.NewRequest("GET", base+"/", nil)
	req.Header.Set("Accept", "text/html")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("demo page: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	resp, err = client.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if first != "id: 1\n" {
		t.Fatalf("first SSE line %q", first)
	}

	// A WebSocket client offers no h2 (the HTTP client above added it to
	// tlsConf).
	d := ws.Dialer{TLSConfig: &cryptotls.Config{RootCAs: pool}, NetDial: dial}
	conn, _, _, err := d.Dial(context.Background(), "wss://localhost:"+port+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := wsutil.WriteClientText(conn, []byte("ping?")); err != nil {
		t.Fatal(err)
	}
	if got, err := wsutil.ReadServerText(conn); err != nil || string(got) != "ping?" {
		t.Fatalf("wss echo %q %v", got, err)
	}

	plain := &http.Client{CheckRedirect: client.CheckRedirect, Timeout: 10 * time.Second}
	resp, err = plain.Get("http://" + httpAddr + "/api/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 308 || !strings.HasPrefix(resp.Header.Get("Location"), "https://") {
		t.Fatalf("plain http: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}

	p.signal(t, syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("demo did not stop on SIGINT")
	}
	if p.code != 0 {
		t.Fatalf("demo exited %d", p.code)
	}
}
