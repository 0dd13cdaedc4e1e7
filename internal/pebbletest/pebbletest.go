// Package pebbletest runs Debian's Pebble, a real ACME server, for tests:
// pebble-challtestsrv as its DNS server (every name resolves to 127.0.0.1)
// and pebble with challenge validation on.
package pebbletest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	cryptotls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/testaddr"
)

// Pebble is a running ACME server.
type Pebble struct {
	// Directory is the ACME directory URL (tls.ca).
	Directory string
	// CARoot is a PEM file of the CA that signed Pebble's own HTTPS
	// listener (tls.ca_root).
	CARoot string
	// Roots holds Pebble's issuing root: clients of the certificates it
	// issues trust this.
	Roots *x509.CertPool
	// Log is what both processes printed so far.
	Log func() string
}

// Start runs Pebble until the test ends. It validates HTTP-01 challenges
// on 127.0.0.1:httpPort and TLS-ALPN-01 on 127.0.0.1:tlsPort. Without
// Debian's pebble package the test is skipped, or fails when CI=true.
func Start(t *testing.T, httpPort, tlsPort int) *Pebble {
	t.Helper()
	pebbleBin, err1 := exec.LookPath("pebble")
	challBin, err2 := exec.LookPath("pebble-challtestsrv")
	if err1 != nil || err2 != nil {
		msg := "pebble and pebble-challtestsrv not in PATH (Debian: apt-get install pebble); ACME test not run"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	caRoot, certPath, keyPath := listenerCert(t, dir)
	acmePort, mgmtPort, dnsPort, challPort := freePort(t), freePort(t), freePort(t), freePort(t)
	cfg, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":             certPath,
		"privateKey":              keyPath,
		"httpPort":                httpPort,
		"tlsPort":                 tlsPort,
		"ocspResponderURL":        "",
	}})
	cfgPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	dns := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	run(t, &out, nil, challBin, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-dns01", dns, "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", challPort))
	run(t, &out, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		pebbleBin, "-config", cfgPath, "-dnsserver", dns)

	pemCA, _ := os.ReadFile(caRoot)
	listenerRoots := x509.NewCertPool()
	listenerRoots.AppendCertsFromPEM(pemCA)
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &cryptotls.Config{RootCAs: listenerRoots}},
		Timeout:   5 * time.Second,
	}
	defer client.CloseIdleConnections()
	fetch := func(url string) ([]byte, error) {
		resp, err := client.Get(url)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	p := &Pebble{Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort), CARoot: caRoot, Log: out.String}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := fetch(p.Directory)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not come up: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rootPEM, err := fetch(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
	if err != nil {
		t.Fatal(err)
	}
	p.Roots = x509.NewCertPool()
	if !p.Roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("pebble /roots/0 returned no certificate: %q", rootPEM)
	}
	return p
}

// listenerCert writes a CA and, signed by it, a certificate for Pebble's
// HTTPS listener (Debian's package ships none).
func listenerCert(t *testing.T, dir string) (caPath, certPath, keyPath string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebble listener CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caPath, certPath, keyPath = filepath.Join(dir, "listener-ca.pem"), filepath.Join(dir, "listener.crt"), filepath.Join(dir, "listener.key")
	for path, block := range map[string]*pem.Block{
		caPath:   {Type: "CERTIFICATE", Bytes: caDER},
		certPath: {Type: "CERTIFICATE", Bytes: der},
		keyPath:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPath, certPath, keyPath
}

// run starts a process that is killed when the test ends (or, on Linux,
// when the test binary dies).
func run(t *testing.T, out io.Writer, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

func freePort(t *testing.T) int { return testaddr.Port(t) }

type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
