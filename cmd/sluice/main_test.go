package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testaddr"
)

// binary is the sluice binary built once for these tests, so that they
// exercise what users run: flags, exit codes, signals.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "sluice")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building sluice: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "listen: {http: \"127.0.0.1:0\"}\nroutes:\n  - path: /\n    upstreams: [http://127.0.0.1:9000]\n")
	typo := writeFile(t, dir, "typo.yaml", "listen: {http: \"127.0.0.1:0\"}\nroutes:\n  - path: /\n    upstream: [http://127.0.0.1:9000]\n")
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"validate", "-config", good}, 0, "ok (1 routes", ""},
		{[]string{"validate", "-config", typo}, 1, "", "typo.yaml:4:5: routes[0]: unknown field \"upstream\""},
		{[]string{"validate", "-config", filepath.Join(dir, "missing.yaml")}, 1, "", "missing.yaml"},
		{[]string{"run", "-config", typo}, 1, "", "typo.yaml:4:5"},
		{[]string{"trust", "-config", good}, 1, "", "only the internal CA"},
		{[]string{"validate", "-nosuchflag"}, 2, "", "flag provided but not defined"},
		{[]string{"validate", "extra"}, 2, "", "unexpected argument"},
		{[]string{"frobnicate"}, 2, "", "unknown command"},
		{[]string{}, 2, "", "Usage:"},
		{[]string{"version"}, 0, "sluice ", ""},
		{[]string{"version", "extra"}, 2, "", "sluice version: unexpected argument \"extra\""},
		{[]string{"help", "run"}, 0, "sluice demo", ""},
		{[]string{"help"}, 0, "sluice demo", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, tt.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q",
					code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func freeAddr(t *testing.T) string { return testaddr.Addr(t) }

// syncBuffer collects a child process's output while it runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type process struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan struct{}
	code           int
}

func startSluice(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("sluice stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

func (p *process) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestReloadAndShutdown runs the real binary: 20 SIGHUP reloads while
// clients send requests without pause (zero failures), a broken file that
// is refused while the old config keeps serving, then SIGTERM with a
// request in flight that still completes, /healthz saying 503 meanwhile,
// and exit code 0.
func TestReloadAndShutdown(t *testing.T) {
	release := make(chan struct{})
	var slowStarted atomic.Bool
	upstream := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				slowStarted.Store(true)
				<-release
			}
			io.WriteString(w, name)
		}))
		t.Cleanup(s.Close)
		return s
	}
	a, b := upstream("a"), upstream("b")
	defer close(release)

	dir := t.TempDir()
	httpAddr, adminAddr := freeAddr(t), freeAddr(t)
	conf := func(up string) string {
		return fmt.Sprintf("listen: {http: %q}\nadmin: {listen: %q}\nlog: {access: off}\ntimeouts: {shutdown: 10s}\nroutes:\n  - path: /\n    upstreams: [%s]\n", httpAddr, adminAddr, up)
	}
	path := writeFile(t, dir, "sluice.yaml", conf(a.URL))
	p := startSluice(t, "run", "-config", path)
	base := "http://" + httpAddr
	waitFor(t, "sluice to serve", 10*time.Second, func() bool {
		code, _, err := get("http://" + adminAddr + "/healthz")
		return err == nil && code == 200
	})

	// Clients hammer the proxy through every reload.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := get(base + "/")
				if err != nil || code != 200 || (body != "a" && body != "b") {
					failed.Add(1)
					lastErr.Store(fmt.Sprintf("%d %q %v", code, body, err))
					continue
				}
				ok.Add(1)
			}
		})
	}
	for i := range 20 {
		want := "b"
		up := b.URL
		if i%2 == 1 {
			want, up = "a", a.URL
		}
		writeFile(t, dir, "sluice.yaml", conf(up))
		p.signal(t, syscall.SIGHUP)
		waitFor(t, "reload "+fmt.Sprint(i+1)+" to take effect", 10*time.Second, func() bool {
			_, body, _ := get(base + "/")
			return body == want
		})
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads; last: %v", failed.Load(), ok.Load()+failed.Load(), lastErr.Load())
	}
	t.Logf("%d requests during 20 SIGHUP reloads, 0 failed", ok.Load())

	// A broken file is refused; the last good config (upstream a) serves on.
	writeFile(t, dir, "sluice.yaml", conf(a.URL)+"    bogus_key: 1\n")
	p.signal(t, syscall.SIGHUP)
	waitFor(t, "the refusal to be logged", 5*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), "reload refused") && strings.Contains(p.stderr.String(), "bogus_key")
	})
	if _, body, err := get(base + "/"); err != nil || body != "a" {
		t.Fatalf("after a refused reload: %q %v", body, err)
	}

	// SIGTERM with a request in flight.
	slow := make(chan string, 1)
	go func() {
		code, body, err := get(base + "/slow")
		slow <- fmt.Sprint(code, " ", body, " ", err)
	}()
	waitFor(t, "the slow request to reach the upstream", 5*time.Second, slowStarted.Load)
	p.signal(t, syscall.SIGTERM)
	waitFor(t, "/healthz to say 503", 5*time.Second, func() bool {
		code, _, _ := get("http://" + adminAddr + "/healthz")
		return code == 503
	})
	select {
	case <-p.exited:
		t.Fatal("sluice exited with a request in flight")
	default:
	}
	release <- struct{}{}
	if got := <-slow; got != "200 a <nil>" {
		t.Fatalf("in-flight request during shutdown: %s", got)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("sluice did not exit after SIGTERM")
	}
	if p.code != 0 {
		t.Fatalf("exit code %d after SIGTERM", p.code)
	}
}
