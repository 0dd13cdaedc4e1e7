package tls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/certmagic"
)

// The internal CA lives in <storage>/ca: root.crt (PEM, the certificate to
// trust) and root.key (PEM PKCS #8, readable by its owner only). It signs
// leaf certificates directly.
const (
	caDir        = "ca"
	rootCertFile = "root.crt"
	rootKeyFile  = "root.key"

	rootLifetime = 10 * 365 * 24 * time.Hour
	// leafLifetime is short: certmagic renews a certificate once a third
	// of its lifetime is left, so a leaked development key is useful for
	// days, not years.
	leafLifetime = 7 * 24 * time.Hour
)

// localCA is the internal certificate authority.
type localCA struct {
	cert     *x509.Certificate
	key      crypto.Signer
	certPath string
}

// RootCertificate returns the path of the internal CA's root certificate
// (PEM) kept in the storage directory, creating the CA first if there is
// none. The same root is used by every later run with that storage, so it
// needs to be trusted (see InstallRoot) only once.
func RootCertificate(storage string) (pemPath string, err error) {
	ca, err := loadOrCreateCA(storageDir(storage))
	if err != nil {
		return "", err
	}
	return ca.certPath, nil
}

// storageDir applies the documented default of tls.storage.
func storageDir(storage string) string {
	if storage == "" {
		return "sluice-data"
	}
	return storage
}

// loadOrCreateCA loads the CA from storage/ca, or creates it there. The
// directory appears atomically with both files in it, so concurrent
// processes sharing storage end up with one CA.
func loadOrCreateCA(storage string) (*localCA, error) {
	dir := filepath.Join(storage, caDir)
	ca, err := loadCA(dir)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return ca, err
	}
	if _, statErr := os.Stat(dir); statErr == nil {
		// The directory is there but a file is missing: someone removed
		// it. Creating a new CA silently would break every client that
		// trusts the old one.
		return nil, fmt.Errorf("loading internal CA: %w (delete %s to create a new CA, then run `sluice trust` again)", err, dir)
	}
	if err := createCA(storage, dir); err != nil {
		return nil, err
	}
	return loadCA(dir)
}

func loadCA(dir string) (*localCA, error) {
	certPath := filepath.Join(dir, rootCertFile)
	keyPath := filepath.Join(dir, rootKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("loading internal CA: %s holds no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("loading internal CA certificate %s: %w", certPath, err)
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("loading internal CA: %s holds no PEM private key", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("loading internal CA key %s: %w", keyPath, err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("loading internal CA key %s: unsupported key type %T", keyPath, parsed)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("loading internal CA: %s does not belong to %s", keyPath, certPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("loading internal CA: %s is not a CA certificate", certPath)
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("loading internal CA: %s expired on %s (delete %s to create a new CA, then run `sluice trust` again)",
			certPath, cert.NotAfter.Format(time.DateOnly), dir)
	}
	return &localCA{cert: cert, key: key, certPath: certPath}, nil
}

// createCA writes a new root into a temporary directory and renames it to
// dir. If another process got there first, the rename fails and its CA wins.
func createCA(storage, dir string) error {
	if err := os.MkdirAll(storage, 0o700); err != nil {
		return fmt.Errorf("creating internal CA: %w", err)
	}
	tmp, err := os.MkdirTemp(storage, ".ca-")
	if err != nil {
		return fmt.Errorf("creating internal CA: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op after a successful rename

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("creating internal CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fmt.Errorf("creating internal CA: %w", err)
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"sluice local development CA"},
			CommonName:   "sluice local CA " + host + " " + now.UTC().Format("2006-01-02"),
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("creating internal CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("creating internal CA key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, rootKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("creating internal CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, rootCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("creating internal CA: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return nil // another process created it first; use theirs
		}
		return fmt.Errorf("creating internal CA: %w", err)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// internalIssuer is the certmagic.Issuer of internal mode: it signs the CSRs
// certmagic makes with the local CA, so issuance, storage, caching and
// renewal follow certmagic's path as they do for ACME.
type internalIssuer struct {
	ca       *localCA
	allows   func(name string) bool // the Manager's current policy, checked again here
	lifetime time.Duration
	key      string
}

func newInternalIssuer(ca *localCA, allows func(string) bool, lifetime time.Duration) *internalIssuer {
	// The issuer key names the CA's public key, so certificates signed by
	// a root that was since replaced are not served from storage.
	sum := sha256.Sum256(ca.cert.RawSubjectPublicKeyInfo)
	return &internalIssuer{
		ca:       ca,
		allows:   allows,
		lifetime: lifetime,
		key:      "sluice-internal-" + hex.EncodeToString(sum[:6]),
	}
}

// IssuerKey implements certmagic.Issuer.
func (i *internalIssuer) IssuerKey() string { return i.key }

// Issue implements certmagic.Issuer.
func (i *internalIssuer) Issue(_ context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("issuing internal certificate: bad certificate request: %w", err)
	}
	var names []string
	names = append(names, csr.DNSNames...)
	for _, ip := range csr.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return nil, errors.New("issuing internal certificate: the request names no host")
	}
	if len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, errors.New("issuing internal certificate: only host names and IP addresses can be certified")
	}
	for _, n := range names {
		if !i.allows(normalizeName(n)) {
			return nil, fmt.Errorf("issuing internal certificate: %q is not localhost or a configured host", n)
		}
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issuing internal certificate: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(i.lifetime)
	if notAfter.After(i.ca.cert.NotAfter) {
		notAfter = i.ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     csr.DNSNames,
		IPAddresses:  append([]net.IP(nil), csr.IPAddresses...),
		NotBefore:    now.Add(-5 * time.Minute), // tolerate clients whose clock is a little behind
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.ca.cert, csr.PublicKey, i.ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing internal certificate for %q: %w", names[0], err)
	}
	return &certmagic.IssuedCertificate{
		Certificate: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}
