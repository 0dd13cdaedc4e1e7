package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	cryptotls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a slog.Handler that keeps records for assertions.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
	t       testing.TB // optional: mirror records to the test log
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.records = append(r.records, rec.Clone())
	r.mu.Unlock()
	if r.t != nil && testing.Verbose() {
		var b strings.Builder
		rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
		r.t.Logf("log %s %q%s", rec.Level, rec.Message, b.String())
	}
	return nil
}

// matching returns the records with message msg whose attribute key has
// value val (any value when key is "").
func (r *recorder) matching(msg, key, val string) []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slog.Record
	for _, rec := range r.records {
		if rec.Message != msg {
			continue
		}
		if key == "" || attr(rec, key) == val {
			out = append(out, rec)
		}
	}
	return out
}

func attr(rec slog.Record, key string) string {
	var v string
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

func newRecorder(t testing.TB) (*recorder, *slog.Logger) {
	r := &recorder{t: t}
	return r, slog.New(r)
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// checkGoroutines fails the test if goroutines of this package, of
// certmagic or of net/http servers and clients outlive it. Call it first:
// cleanups run last-in first-out, so it runs after every other cleanup.
// certmagic's process-wide helpers are allowed: its per-CA rate limiter
// loops live for the process by design, and lock-freshness goroutines end
// on their own within 5s of the lock being released.
func checkGoroutines(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(15 * time.Second)
		for {
			leaked := interestingGoroutines()
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func interestingGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		switch {
		case strings.Contains(g, "interestingGoroutines"),
			strings.Contains(g, "RingBufferRateLimiter).loop"),
			strings.Contains(g, "certmagic.keepLockfileFresh"):
			continue
		case strings.Contains(g, "caddyserver/certmagic"),
			strings.Contains(g, "sluice/tls."),
			strings.Contains(g, "net/http.(*Server)"),
			strings.Contains(g, "net/http.(*conn)"),
			strings.Contains(g, "net/http.(*persistConn)"),
			strings.Contains(g, "os/exec."):
			out = append(out, g)
		}
	}
	return out
}

// testCA is a throwaway CA for test certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

var serialCounter atomic.Int64

// writePair writes dir/base.crt and dir/base.key, a leaf for names (DNS
// names or IP addresses) signed by ca, and returns their paths and serial.
func (ca *testCA) writePair(t testing.TB, dir, base string, names ...string) (certPath, keyPath string, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial = big.NewInt(time.Now().UnixNano() + serialCounter.Add(1))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath = filepath.Join(dir, base+".crt")
	keyPath = filepath.Join(dir, base+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, serial
}

// testServer is an https server using a Manager's TLSConfig.
type testServer struct {
	addr   string
	srv    *http.Server
	closed atomic.Int64 // connections closed, handshake failures included
}

// serveTLS serves "hello <proto>" on network address addr (e.g.
// "127.0.0.1:0") with tlsConf, until the test ends.
func serveTLS(t testing.TB, addr string, tlsConf *cryptotls.Config, m *Manager) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String()}
	ts.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.Proto)
		}),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				ts.closed.Add(1)
			}
		},
	}
	if m != nil {
		ts.srv.ErrorLog = m.ServerErrorLog()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts.srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		ts.srv.Close()
		<-done
	})
	return ts
}

// httpsClient returns a client trusting roots whose connections all go to
// addr, whatever the URL's host, so the URL's host is the SNI.
func httpsClient(t testing.TB, roots *x509.CertPool, addr string) *http.Client {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &cryptotls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// get fetches url and returns the body and the response's TLS state.
func get(t testing.TB, c *http.Client, url string) (string, *http.Response) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return string(body), resp
}

// handshake dials addr and completes a TLS handshake with server name sni,
// returning the server's leaf certificate.
func handshake(addr, sni string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conf := &cryptotls.Config{ServerName: sni, RootCAs: roots}
	if roots == nil {
		conf.InsecureSkipVerify = true
	}
	conn, err := cryptotls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}
