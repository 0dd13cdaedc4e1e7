package tls

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/internal/pebbletest"
)

// counter counts events by name.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[name]++
}

func (c *counter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestACMEWithPebble obtains certificates from a real ACME server, Pebble,
// with challenge validation on: one by HTTP-01, one by TLS-ALPN-01.
// pebble-challtestsrv is only its DNS server, resolving every name to
// 127.0.0.1, where the test serves the Manager's HTTPHandler on Pebble's
// httpPort and its TLSConfig on Pebble's tlsPort.
func TestACMEWithPebble(t *testing.T) {
	// Certmagic's jobs end shortly after Stop, and may still release a
	// lock in storage: remove the directory only after they are gone.
	dir := t.TempDir()
	checkGoroutines(t)
	start := time.Now()
	deadline := start.Add(50 * time.Second)

	// The listeners the challenges come to, bound before the Managers.
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pebble := pebbletest.Start(t, httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port)
	directory, caRoot, pebbleRoots := pebble.Directory, pebble.CARoot, pebble.Roots

	// Serve the listeners; the Manager behind them changes between phases.
	var current struct {
		sync.Mutex
		m *Manager
	}
	manager := func() *Manager {
		current.Lock()
		defer current.Unlock()
		return current.m
	}
	var http01Hits, alpnHits counter
	httpSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				host, _, _ := net.SplitHostPort(r.Host)
				http01Hits.add(host)
			}
			manager().HTTPHandler(http.NotFoundHandler()).ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	httpsSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.Proto)
		}),
		TLSConfig: &cryptotls.Config{
			GetConfigForClient: func(hello *cryptotls.ClientHelloInfo) (*cryptotls.Config, error) {
				if isTLSALPNChallenge(hello) {
					alpnHits.add(hello.ServerName)
				}
				return manager().TLSConfig(), nil
			},
		},
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: log.New(writerFunc(func(p []byte) (int, error) {
			return manager().ServerErrorLog().Writer().Write(p)
		}), "", 0),
	}
	var serving sync.WaitGroup
	serving.Go(func() { httpSrv.Serve(httpLn) })
	serving.Go(func() { httpsSrv.ServeTLS(tlsLn, "", "") })
	t.Cleanup(func() {
		httpSrv.Close()
		httpsSrv.Close()
		serving.Wait()
	})

	storage := filepath.Join(dir, "storage")
	rec, logger := newRecorder(t)
	acmeConfig := func(listenHTTP string, hosts ...string) *config.Config {
		return &config.Config{
			Listen: config.Listen{HTTP: listenHTTP, HTTPS: tlsLn.Addr().String()},
			TLS: config.TLS{
				Mode:    config.TLSACME,
				CA:      directory,
				CARoot:  caRoot,
				Email:   "ops@sluice.test",
				Storage: storage,
			},
			Routes: []config.Route{
				{Name: "one", Hosts: hosts, Path: "/"},
			},
		}
	}
	waitServed := func(sni string) *x509.Certificate {
		t.Helper()
		for {
			leaf, err := handshake(tlsLn.Addr().String(), sni, pebbleRoots)
			if err == nil {
				return leaf
			}
			if time.Now().After(deadline) {
				t.Fatalf("no certificate for %s in time: %v", sni, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Phase 1: HTTP-01 only, for http01.example.
	ctx := context.Background()
	m1, err := newManager(ctx, acmeConfig(httpLn.Addr().String(), "http01.example"), logger, options{disableTLSALPN01: true})
	if err != nil {
		t.Fatal(err)
	}
	current.Lock()
	current.m = m1
	current.Unlock()
	t.Cleanup(m1.Stop)
	waitServed("http01.example")
	if http01Hits.get("http01.example") == 0 || alpnHits.get("http01.example") != 0 {
		t.Errorf("http01.example: %d HTTP-01 and %d TLS-ALPN-01 validations; want HTTP-01 only",
			http01Hits.get("http01.example"), alpnHits.get("http01.example"))
	}
	t.Logf("HTTP-01 certificate after %s", time.Since(start).Round(time.Millisecond))
	m1.Stop()

	// Phase 2: listen.http off, so TLS-ALPN-01 only, for alpn.example; the
	// first certificate comes from storage. Wildcards are not obtained.
	m2, err := New(ctx, acmeConfig("", "http01.example", "alpn.example", "*.wild.example"), logger)
	if err != nil {
		t.Fatal(err)
	}
	current.Lock()
	current.m = m2
	current.Unlock()
	t.Cleanup(m2.Stop)
	waitServed("alpn.example")
	if alpnHits.get("alpn.example") == 0 || http01Hits.get("alpn.example") != 0 {
		t.Errorf("alpn.example: %d TLS-ALPN-01 and %d HTTP-01 validations; want TLS-ALPN-01 only",
			alpnHits.get("alpn.example"), http01Hits.get("alpn.example"))
	}
	t.Logf("TLS-ALPN-01 certificate after %s", time.Since(start).Round(time.Millisecond))

	// Both served by SNI from one Manager, trusted through Pebble's root,
	// and a full HTTPS request over HTTP/2.
	client := httpsClient(t, pebbleRoots, tlsLn.Addr().String())
	for _, host := range []string{"http01.example", "alpn.example"} {
		leaf := waitServed(host)
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
		if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
			t.Errorf("%s: issued by %q; want Pebble", host, leaf.Issuer.CommonName)
		}
		body, resp := get(t, client, "https://"+host+"/")
		if body != "hello HTTP/2.0" || resp.TLS.NegotiatedProtocol != "h2" {
			t.Errorf("%s: body %q over %q", host, body, resp.TLS.NegotiatedProtocol)
		}
	}

	// A reload adding late.wild.example (under a wildcard that was
	// already configured) and dropping http01.example: the new name is
	// obtained, the dropped one no longer served.
	if err := m2.Update(ctx, acmeConfig("", "alpn.example", "late.wild.example", "*.wild.example")); err != nil {
		t.Fatal(err)
	}
	waitServed("late.wild.example")
	if _, err := handshake(tlsLn.Addr().String(), "http01.example", pebbleRoots); err == nil {
		t.Error("http01.example still served after it was removed")
	}
	changedCA := acmeConfig("", "alpn.example")
	changedCA.TLS.CA = "https://acme-v02.api.letsencrypt.org/directory"
	if err := m2.Update(ctx, changedCA); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("Update changing tls.ca: err = %v; want ErrRestartRequired", err)
	}
	t.Logf("reload obtained late.wild.example after %s", time.Since(start).Round(time.Millisecond))

	// Unconfigured names and wildcards: refused, and never asked of Pebble.
	for _, sni := range []string{"evil.example", "a.wild.example"} {
		if _, err := handshake(tlsLn.Addr().String(), sni, pebbleRoots); err == nil {
			t.Errorf("handshake for %s succeeded; want refusal", sni)
		}
	}
	if n := len(rec.matching("tls handshake for unknown server name refused", "server_name", "evil.example")); n != 1 {
		t.Errorf("evil.example refusal logged %d times; want 1", n)
	}
	pl := pebble.Log()
	if orders := strings.Count(pl, "POST /order-plz"); orders != 3 {
		t.Errorf("pebble received %d new orders; want 3 (http01.example, alpn.example, late.wild.example)", orders)
	}
	for _, name := range []string{"evil.example", "a.wild.example", `"*.wild.example"`} {
		if strings.Contains(pl, name) {
			t.Errorf("pebble or its DNS server saw %s", name)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// An unreachable CA is logged, retried in the background, and Stop ends
// the retrying.
func TestACMEUnreachableCAStopsCleanly(t *testing.T) {
	storage := t.TempDir() // removed after the goroutine check: see TestACMEWithPebble
	checkGoroutines(t)
	dead := freePort(t) // nothing listens here
	rec, logger := newRecorder(t)
	cfg := &config.Config{
		Listen: config.Listen{HTTP: "127.0.0.1:0", HTTPS: "127.0.0.1:0"},
		TLS: config.TLS{
			Mode:    config.TLSACME,
			CA:      fmt.Sprintf("https://127.0.0.1:%d/dir", dead),
			Storage: storage,
		},
		Routes: []config.Route{{Hosts: []string{"down.example"}, Path: "/"}},
	}
	m, err := New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failure to be logged", func() bool {
		return len(rec.matching("could not get certificate from issuer", "identifier", "down.example")) > 0
	})
	m.Stop()
	for _, r := range rec.matching("job failed", "", "") {
		t.Errorf("cancellation by Stop logged as an error: %s", attr(r, "error"))
	}
}
