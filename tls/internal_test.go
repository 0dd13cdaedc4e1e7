package tls

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

func internalConfig(storage string, hosts ...string) *config.Config {
	return &config.Config{
		Listen: config.Listen{HTTP: "127.0.0.1:0", HTTPS: "127.0.0.1:0"},
		TLS:    config.TLS{Mode: config.TLSInternal, Storage: storage},
		Routes: []config.Route{{Name: "app", Hosts: hosts, Path: "/"}},
	}
}

// rootPool trusts only the internal CA root of storage.
func rootPool(t testing.TB, storage string) (*x509.CertPool, []byte) {
	t.Helper()
	path, err := RootCertificate(storage)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("%s holds no certificate", path)
	}
	return pool, pemBytes
}

// storageMentions reports whether any file or directory under dir is
// named after name (certmagic keeps a directory per certificate name).
func storageMentions(t testing.TB, dir, name string) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if filepath.Base(p) == name {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestInternalServesLocalNamesOverH2(t *testing.T) {
	checkGoroutines(t)
	storage := t.TempDir()
	_, logger := newRecorder(t)
	m, err := New(context.Background(), internalConfig(storage, "app.example.com", "*.example.net"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	_, port, _ := net.SplitHostPort(ts.addr)
	roots, _ := rootPool(t, storage)
	c := httpsClient(t, roots, ts.addr)

	// localhost and 127.0.0.1 are the point of internal mode; the others
	// are a *.localhost name, a configured host and a name under a
	// configured wildcard.
	for _, host := range []string{"localhost", "127.0.0.1", "app.localhost", "app.example.com", "a.b.example.net"} {
		body, resp := get(t, c, "https://"+net.JoinHostPort(host, port)+"/")
		if resp.ProtoMajor != 2 || resp.TLS.NegotiatedProtocol != "h2" {
			t.Errorf("%s: protocol %s, ALPN %q; want HTTP/2 via h2", host, resp.Proto, resp.TLS.NegotiatedProtocol)
		}
		if body != "hello HTTP/2.0" {
			t.Errorf("%s: body %q", host, body)
		}
		leaf := resp.TLS.PeerCertificates[0]
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 8*24*time.Hour {
			t.Errorf("%s: leaf lifetime %s; want about 7 days", host, life)
		}
	}

	// ::1 gets a certificate too, where the machine has IPv6 loopback.
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		ts6 := serveTLS(t, "[::1]:0", m.TLSConfig(), m)
		c6 := httpsClient(t, roots, ts6.addr)
		_, port6, _ := net.SplitHostPort(ts6.addr)
		_, resp := get(t, c6, "https://[::1]:"+port6+"/")
		if err := resp.TLS.PeerCertificates[0].VerifyHostname("::1"); err != nil {
			t.Errorf("::1: %v", err)
		}
	} else {
		t.Logf("no IPv6 loopback here; ::1 not tested: %v", err)
	}

	// A stranger's SNI gets no certificate, and nothing is issued for it.
	for _, sni := range []string{"evil.example", "example.net", "localhost.evil.example"} {
		if _, err := handshake(ts.addr, sni, roots); err == nil {
			t.Errorf("handshake with SNI %q succeeded; want refusal", sni)
		}
		if storageMentions(t, storage, sni) {
			t.Errorf("storage has files for %q", sni)
		}
	}
}

func TestInternalRootCreatedOnceAndReused(t *testing.T) {
	checkGoroutines(t)
	storage := t.TempDir()
	_, logger := newRecorder(t)
	cfg := internalConfig(storage)

	m1, err := New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	roots, root1 := rootPool(t, storage)
	ts1 := serveTLS(t, "127.0.0.1:0", m1.TLSConfig(), m1)
	if _, err := handshake(ts1.addr, "localhost", roots); err != nil {
		t.Fatalf("first manager: %v", err)
	}
	m1.Stop()
	if _, err := handshake(ts1.addr, "localhost", roots); err == nil {
		t.Error("handshake after Stop succeeded")
	}

	keyInfo, err := os.Stat(filepath.Join(storage, "ca", "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := keyInfo.Mode().Perm(); perm != 0o600 {
		t.Errorf("root.key mode %o; want 600", perm)
	}

	// A second Manager on the same storage uses the same root: a client
	// trusting the first root still connects.
	m2, err := New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m2.Stop)
	_, root2 := rootPool(t, storage)
	if !bytes.Equal(root1, root2) {
		t.Fatal("root certificate changed between managers")
	}
	ts2 := serveTLS(t, "127.0.0.1:0", m2.TLSConfig(), m2)
	for _, sni := range []string{"localhost", "other.localhost"} {
		if _, err := handshake(ts2.addr, sni, roots); err != nil {
			t.Errorf("second manager, %s: %v", sni, err)
		}
	}
}

func TestInternalMissingKeyIsAnErrorNotANewCA(t *testing.T) {
	storage := t.TempDir()
	if _, err := RootCertificate(storage); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(storage, "ca", "root.key")); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), internalConfig(storage), nil)
	if err == nil || !strings.Contains(err.Error(), "delete") {
		t.Fatalf("New with a CA missing its key: err = %v; want an error saying what to delete", err)
	}
}

func TestInternalUpdateChangesAllowedNames(t *testing.T) {
	checkGoroutines(t)
	storage := t.TempDir()
	_, logger := newRecorder(t)
	m, err := New(context.Background(), internalConfig(storage, "old.example"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	roots, _ := rootPool(t, storage)

	if _, err := handshake(ts.addr, "old.example", roots); err != nil {
		t.Fatalf("old.example before update: %v", err)
	}
	if _, err := handshake(ts.addr, "new.example", roots); err == nil {
		t.Fatal("new.example served before it is configured")
	}
	if err := m.Update(context.Background(), internalConfig(storage, "new.example")); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(ts.addr, "new.example", roots); err != nil {
		t.Errorf("new.example after update: %v", err)
	}
	// old.example's certificate is cached and stored, yet no longer served.
	if _, err := handshake(ts.addr, "old.example", roots); err == nil {
		t.Error("old.example still served after it was removed")
	}

	cfg := internalConfig(storage, "new.example")
	cfg.TLS.Mode = config.TLSFiles
	if err := m.Update(context.Background(), cfg); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("Update changing tls.mode: err = %v; want ErrRestartRequired", err)
	}
	if _, err := handshake(ts.addr, "new.example", roots); err != nil {
		t.Errorf("refused Update changed the state: %v", err)
	}
}

// TestInstallRoot changes the machine's trust store, so it runs only when
// SLUICE_TEST_TRUST=1 (on a disposable machine, as root). It then checks
// that the system roots, as Go loads them on first use, trust a
// certificate the internal CA issued. Run it alone: another test loading
// the system roots first would freeze Go's view of them.
func TestInstallRoot(t *testing.T) {
	if os.Getenv("SLUICE_TEST_TRUST") != "1" {
		t.Skip("changes the system trust store; set SLUICE_TEST_TRUST=1 to run")
	}
	storage := os.Getenv("SLUICE_TEST_TRUST_STORAGE")
	if storage == "" {
		storage = t.TempDir()
	}
	if err := InstallRoot(storage); err != nil {
		t.Fatal(err)
	}
	m, err := New(context.Background(), internalConfig(storage), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	_, port, _ := net.SplitHostPort(ts.addr)
	body, _ := get(t, httpsClient(t, nil /* system roots */, ts.addr), "https://localhost:"+port+"/")
	if body != "hello HTTP/2.0" {
		t.Errorf("body %q", body)
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-sS", "--connect-to", "localhost:"+port+":"+ts.addr, "https://localhost:"+port+"/").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "hello") {
			t.Errorf("curl with the system trust store: %v: %s", err, out)
		}
	}
}

// nonLoopbackIP returns an address of this machine that is not loopback.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP
		}
	}
	t.Skip("no non-loopback IPv4 address on this machine")
	return nil
}

func TestInternalLocalNamesOnlyForLoopbackClients(t *testing.T) {
	checkGoroutines(t)
	ip := nonLoopbackIP(t)
	storage := t.TempDir()
	_, logger := newRecorder(t)
	m, err := New(context.Background(), internalConfig(storage, "app.example.com"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, net.JoinHostPort(ip.String(), "0"), m.TLSConfig(), m)
	roots, _ := rootPool(t, storage)

	// Dialled from ip, the client is not on the loopback interface.
	for _, sni := range []string{"localhost", "x.localhost"} {
		if _, err := handshake(ts.addr, sni, roots); err == nil {
			t.Errorf("%s served to a client that is not on loopback", sni)
		}
	}
	if _, err := handshake(ts.addr, "app.example.com", roots); err != nil {
		t.Errorf("configured host: %v", err)
	}
}

func TestInternalNewWildcardNamesAreRateLimited(t *testing.T) {
	checkGoroutines(t)
	storage := t.TempDir()
	rec, logger := newRecorder(t)
	m, err := New(context.Background(), internalConfig(storage, "*.example.net"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	roots, _ := rootPool(t, storage)

	start := time.Now()
	issued, refused := 0, 0
	for i := range newNameBurst + 10 {
		if _, err := handshake(ts.addr, fmt.Sprintf("n%d.example.net", i), roots); err != nil {
			refused++
		} else {
			issued++
		}
	}
	refills := int(time.Since(start)/newNameEvery) + 1
	if issued < newNameBurst || issued > newNameBurst+refills || refused == 0 {
		t.Errorf("%d new names issued, %d refused; want %d (+%d refills) issued and the rest refused",
			issued, refused, newNameBurst, refills)
	}
	if n := len(rec.matching("no certificate to serve", "", "")); n != 1 {
		t.Errorf("%d refusals logged; want 1 (one cause)", n)
	}
	// Names issued before, and fixed names, need no token.
	for _, sni := range []string{"n0.example.net", "localhost"} {
		if _, err := handshake(ts.addr, sni, roots); err != nil {
			t.Errorf("%s while new names are limited: %v", sni, err)
		}
	}
}
