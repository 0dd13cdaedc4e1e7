package tls

import (
	"context"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/config"
)

func filesConfig(pairs ...config.CertFile) *config.Config {
	return &config.Config{
		Listen: config.Listen{HTTPS: "127.0.0.1:0"},
		TLS:    config.TLS{Mode: config.TLSFiles, Certificates: pairs},
	}
}

func TestFilesChosenBySNI(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	ca := newTestCA(t, "files test CA")
	aCert, aKey, aSerial := ca.writePair(t, dir, "a", "a.example")
	bCert, bKey, bSerial := ca.writePair(t, dir, "b", "b.example", "*.b.example")
	a := config.CertFile{Cert: aCert, Key: aKey}
	b := config.CertFile{Cert: bCert, Key: bKey}

	_, logger := newRecorder(t)
	m, err := New(context.Background(), filesConfig(a, b), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	roots := ca.pool()

	expect := func(sni string, want *big.Int) {
		t.Helper()
		// Without SNI the name cannot be verified; look at the serial.
		verify := roots
		if sni == "" {
			verify = nil
		}
		leaf, err := handshake(ts.addr, sni, verify)
		if err != nil {
			t.Errorf("SNI %q: %v", sni, err)
			return
		}
		if leaf.SerialNumber.Cmp(want) != 0 {
			t.Errorf("SNI %q: got certificate for %v (serial %v); want serial %v", sni, leaf.DNSNames, leaf.SerialNumber, want)
		}
	}
	expect("a.example", aSerial)
	expect("b.example", bSerial)
	expect("x.b.example", bSerial)
	expect("", aSerial) // no SNI: the first pair
	for _, sni := range []string{"c.example", "x.y.b.example"} {
		if _, err := handshake(ts.addr, sni, roots); err == nil {
			t.Errorf("SNI %q: handshake succeeded; want refusal", sni)
		}
	}

	// Reload after b's files were replaced (say, renewed by another tool):
	// the new pair is served.
	_, _, bSerial2 := ca.writePair(t, dir, "b", "b.example", "*.b.example")
	if err := m.Update(context.Background(), filesConfig(a, b)); err != nil {
		t.Fatal(err)
	}
	expect("b.example", bSerial2)
	expect("a.example", aSerial)

	// A reload with a missing file fails and changes nothing.
	missing := config.CertFile{Cert: filepath.Join(dir, "nope.crt"), Key: filepath.Join(dir, "nope.key")}
	if err := m.Update(context.Background(), filesConfig(b, missing)); err == nil {
		t.Error("Update with a missing file succeeded")
	}
	expect("a.example", aSerial)
	expect("", aSerial)

	// Dropping a pair stops serving it; the first pair is now b.
	if err := m.Update(context.Background(), filesConfig(b)); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(ts.addr, "a.example", roots); err == nil {
		t.Error("a.example still served after its pair was removed")
	}
	expect("", bSerial2)
}

func TestFilesErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.crt")
	if err := os.WriteFile(bad, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), filesConfig(config.CertFile{Cert: bad, Key: bad}), nil)
	if err == nil {
		t.Fatal("New with a bad PEM file succeeded")
	}
	if want := "tls.certificates[0]"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), bad) {
		t.Errorf("error %q does not name %s and the file", err, want)
	}
}
