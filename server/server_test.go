package server

import (
	"bytes"
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/internal/testaddr"
	sluicetls "github.com/sluice-proxy/sluice/tls"
)

func upstream(t *testing.T, body string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func load(t *testing.T, yaml string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

func start(t *testing.T, cfg *config.Config) *Server {
	t.Helper()
	var out bytes.Buffer
	s, err := New(cfg, Options{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// TestInternalTLS serves https from the internal CA: a client that trusts
// only the generated root connects to localhost, speaks HTTP/2 and gets
// HSTS; the plain listener redirects with 308, keeping path, query and the
// https port.
func TestInternalTLS(t *testing.T) {
	up := upstream(t, "hello")
	storage := t.TempDir()
	cfg := load(t, fmt.Sprintf(`
listen: {http: %q, https: "127.0.0.1:0"}
tls: {mode: internal, storage: %q, hsts: 24h}
admin: {listen: "127.0.0.1:0"}
log: {access: off}
routes:
  - upstreams: [%s]
`, freeAddr(t), storage, up.URL))
	s := start(t, cfg)
	_, httpsPort, _ := net.SplitHostPort(s.Addr("https"))

	rootPath, err := sluicetls.RootCertificate(storage)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		t.Fatal("root is not PEM")
	}
	dialer := &net.Dialer{}
	client := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   &cryptotls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()

	resp, err := client.Get("https://localhost:" + httpsPort + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello" || resp.ProtoMajor != 2 {
		t.Fatalf("got %d %q over %s; want 200 hello over HTTP/2", resp.StatusCode, body, resp.Proto)
	}
	if got := resp.Header.Get("Strict-Transport-Security"); got != "max-age=86400" {
		t.Fatalf("Strict-Transport-Security %q", got)
	}
	if v := resp.TLS.Version; v < cryptotls.VersionTLS12 {
		t.Fatalf("TLS version %x", v)
	}

	// HTTP/1.1 over TLS goes through sluice's own HTTP/1 server: same
	// answer, same HSTS.
	h1Client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &cryptotls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}},
		DialContext:     client.Transport.(*http.Transport).DialContext,
	}}
	defer h1Client.CloseIdleConnections()
	resp, err = h1Client.Get("https://localhost:" + httpsPort + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello" || resp.ProtoMajor != 1 || resp.Header.Get("Strict-Transport-Security") != "max-age=86400" {
		t.Fatalf("HTTP/1.1: got %d %q over %s, HSTS %q", resp.StatusCode, body, resp.Proto, resp.Header.Get("Strict-Transport-Security"))
	}

	req, _ := http.NewRequest("GET", "http://"+s.Addr("http")+"/a/b?c=d", nil)
	req.Host = "localhost"
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := "https://localhost:" + httpsPort + "/a/b?c=d"; resp.StatusCode != 308 || resp.Header.Get("Location") != want {
		t.Fatalf("plain http: %d Location %q; want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}

	// The certificate issued on demand shows in the metrics.
	if body := mustGet(t, "http://"+s.Addr("admin")+"/metrics"); !strings.Contains(body, `sluice_certificate_events_total{event="cert_obtained"} 1`) {
		t.Errorf("/metrics does not count the obtained certificate:\n%s", grepLines(body, "sluice_certificate"))
	}
	// A client offering TLS 1.1 at most is refused.
	conn, err := cryptotls.Dial("tcp", s.Addr("https"), &cryptotls.Config{ServerName: "localhost", RootCAs: roots, MaxVersion: cryptotls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
}

func TestRedirectTarget(t *testing.T) {
	tests := []struct{ host, port, uri, want string }{
		{"example.com", "443", "/x?y=1", "https://example.com/x?y=1"},
		{"example.com:80", "8443", "/", "https://example.com:8443/"},
		{"[::1]:8080", "8443", "/p", "https://[::1]:8443/p"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tt.uri, nil)
		req.Host = tt.host
		redirectToHTTPS(rec, req, tt.port)
		if rec.Code != 308 || rec.Header().Get("Location") != tt.want {
			t.Errorf("%s%s: %d %q, want 308 %q", tt.host, tt.uri, rec.Code, rec.Header().Get("Location"), tt.want)
		}
	}
}

// TestReloadListeners moves the plain listener on reload: the new address
// serves, the old one stops; a reload naming an address that cannot be
// bound is refused and the old listener keeps serving.
func TestReloadListeners(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	admin := freeAddr(t)
	conf := func(addr, up string) string {
		return fmt.Sprintf("listen: {http: %q}\nadmin: {listen: %q}\nlog: {access: off}\nroutes:\n  - upstreams: [%s]\n", addr, admin, up)
	}
	s := start(t, load(t, conf("127.0.0.1:0", a.URL)))
	oldAddr, adminAddr := s.Addr("http"), s.Addr("admin")

	if err := s.Reload(load(t, conf("127.0.0.1:0", b.URL))); err != nil {
		t.Fatal(err)
	}
	// "127.0.0.1:0" is unchanged as configured, so the listener stays.
	if s.Addr("http") != oldAddr || s.Addr("admin") != adminAddr {
		t.Fatalf("an unchanged listener moved: %s -> %s", oldAddr, s.Addr("http"))
	}
	if body := mustGet(t, "http://"+oldAddr+"/"); body != "b" {
		t.Fatalf("after reload got %q, want b", body)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = s.Reload(load(t, conf(busy.Addr().String(), a.URL)))
	if err == nil || !strings.Contains(err.Error(), "reload refused") || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("reload onto a busy port: %v", err)
	}
	if body := mustGet(t, "http://"+oldAddr+"/"); body != "b" {
		t.Fatalf("after a refused reload got %q, want b", body)
	}

	newAddr := freeAddr(t)
	if err := s.Reload(load(t, conf(newAddr, a.URL))); err != nil {
		t.Fatal(err)
	}
	if body := mustGet(t, "http://"+newAddr+"/"); body != "a" {
		t.Fatalf("new listener got %q", body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", oldAddr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the old listener still accepts after the reload moved it")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string { return testaddr.Addr(t) }

func mustGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestStartReportsBusyAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	up := upstream(t, "x")
	cfg := load(t, fmt.Sprintf("listen: {http: %q}\nadmin: {listen: \"127.0.0.1:0\"}\nroutes:\n  - upstreams: [%s]\n", busy.Addr().String(), up.URL))
	s, err := New(cfg, Options{Stdout: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "listen.http") {
		t.Fatalf("Start on a busy port: %v", err)
	}
	if s.Addr("admin") != "" {
		t.Fatal("admin listener left open after a failed start")
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
