package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMetricsAfterTraffic checks /metrics on the admin listener after a
// proxied request, a 404 and a rate-limited request, and that the public
// listener does not serve /metrics or /healthz.
func TestMetricsAfterTraffic(t *testing.T) {
	up := upstream(t, "ok")
	s := start(t, load(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
log: {access: off}
routes:
  - name: api
    path: /api
    upstreams: [%s]
    rate_limit: {requests_per_second: 1, burst: 1}
  - name: dead
    path: /dead
    upstreams: [http://%s]
`, up.URL, freeAddr(t))))
	base := "http://" + s.Addr("http")
	for _, p := range []string{"/api/x", "/api/x", "/nowhere", "/dead"} {
		mustGet(t, base+p)
	}
	body := mustGet(t, "http://"+s.Addr("admin")+"/metrics")
	for _, want := range []string{
		`sluice_http_requests_total{code="200",route="api"} 1`,
		`sluice_http_requests_total{code="429",route="api"} 1`,
		`sluice_http_requests_total{code="404",route="none"} 1`,
		`sluice_http_requests_total{code="502",route="dead"} 1`,
		`sluice_rate_limited_total{kind="http",route="api"} 1`,
		`sluice_upstream_dial_failures_total{upstream="http://`,
		`sluice_http_request_duration_seconds_count{route="api"} 2`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, p := range []string{"/metrics", "/healthz"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("public listener answers %s with %d, want 404 (no route)", p, resp.StatusCode)
		}
	}
}

// TestSlowLoris checks that a client trickling its request headers is cut
// off after timeouts.read_header, and that oversized headers are refused.
func TestSlowLoris(t *testing.T) {
	up := upstream(t, "ok")
	s := start(t, load(t, fmt.Sprintf(`
listen: {http: "127.0.0.1:0"}
admin: {listen: off}
log: {access: off}
timeouts: {read_header: 300ms}
routes:
  - upstreams: [%s]
`, up.URL)))
	conn, err := net.Dial("tcp", s.Addr("http"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n")
	closed := make(chan error, 1)
	go func() {
		// Keep trickling a header byte every 50ms until the server hangs up.
		for i := 0; i < 100; i++ {
			if _, err := io.WriteString(conn, "X"); err != nil {
				closed <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		closed <- nil
	}()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(conn)
	if err != nil {
		t.Fatalf("waiting for the server to hang up: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("connection closed after %v, want about 300ms", d)
	}
	conn.Close()
	<-closed

	// Headers over 1 MiB: 431.
	conn2, err := net.Dial("tcp", s.Addr("http"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	go func() {
		fmt.Fprintf(conn2, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 2<<20))
	}()
	conn2.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn2), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("2 MiB of headers: %d, want 431", resp.StatusCode)
	}
}

// TestAccessLogFileReopenedOnReload checks the logrotate story: after the
// file is moved away, a reload opens a new one at the configured path.
func TestAccessLogFileReopenedOnReload(t *testing.T) {
	up := upstream(t, "ok")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	conf := fmt.Sprintf("listen: {http: \"127.0.0.1:0\"}\nadmin: {listen: off}\nlog: {access: %q}\nroutes:\n  - upstreams: [%s]\n", logPath, up.URL)
	s := start(t, load(t, conf))
	base := "http://" + s.Addr("http")
	mustGet(t, base+"/first")
	waitForFile := func(path, want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(path)
			if strings.Contains(string(b), want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks %q: %q", path, want, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitForFile(logPath, `"path":"/first"`)
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(load(t, conf)); err != nil {
		t.Fatal(err)
	}
	mustGet(t, base+"/second")
	waitForFile(logPath, `"path":"/second"`)
	if b, _ := os.ReadFile(logPath + ".1"); strings.Contains(string(b), "/second") {
		t.Fatal("the rotated file still receives lines")
	}
}
