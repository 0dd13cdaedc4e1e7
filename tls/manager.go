// Package tls owns sluice's certificates: it obtains, stores, renews and
// serves them for the https listener, whatever their source.
//
// Every certificate is served from one certmagic cache (a Manager has its
// own; certmagic's package-level defaults are not used), chosen by SNI:
//
//   - acme: certmagic obtains and renews a certificate from an RFC 8555 CA
//     for every host named in routes[].hosts, wildcards excepted, answering
//     HTTP-01 on the plain-HTTP listener (HTTPHandler) and TLS-ALPN-01 on
//     the https listener (TLSConfig). Nothing is ever requested for a name
//     that is not configured.
//   - internal: a local CA kept in the storage directory issues short-lived
//     certificates on demand, during the first handshake for a name, for
//     the configured hosts and, for clients on the loopback interface,
//     localhost, 127.0.0.1, ::1 and *.localhost; nothing else. Names that
//     only a wildcard allows (any number of them exist) get at most 20 new
//     certificates at once and 20 a minute after that. InstallRoot makes
//     the system trust the CA.
//   - files: the configured PEM pairs; a client without SNI gets the pair
//     naming the IP address it dialled, else the first pair. Files are
//     re-read on Update.
//
// Handshakes that cannot be served (an unknown SNI, a failed issuance) fail
// and are logged once per cause per minute, not once per connection.
//
// Import it as sluicetls; inside this package crypto/tls is cryptotls.
package tls

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/sluice-proxy/sluice/config"
)

// acmeTLS1 is the ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
const acmeTLS1 = "acme-tls/1"

// ErrRestartRequired is returned (wrapped) by Update when the new
// configuration changes a TLS setting that only takes effect on restart:
// tls.mode, tls.storage, and in acme mode tls.ca, tls.ca_root, tls.email
// and whether listen.http is on.
var ErrRestartRequired = errors.New("restart sluice to apply this tls change")

// Manager serves the certificates of one sluice configuration. Create it
// with New; it is safe for concurrent use. Stop it when done: it owns
// background renewal.
type Manager struct {
	logger *slog.Logger
	causes *causeLog
	zap    *zap.Logger

	settings settings // what Update cannot change

	// ctx bounds background work (obtaining, renewing); Stop cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	cache *certmagic.Cache
	magic *certmagic.Config     // set once by New
	acme  *certmagic.ACMEIssuer // acme mode only; set once by New
	// magicForCache is m.magic for the cache's maintenance goroutine,
	// which starts before m.magic is set.
	magicForCache atomic.Pointer[certmagic.Config]

	state     atomic.Pointer[state]
	eventHook atomic.Pointer[func(event string)] // set by OnEvent

	mu       sync.Mutex  // serializes Update and Stop
	stopped  atomic.Bool // read by handshakes without mu
	cachedMu sync.Mutex
	cached   map[string]struct{} // internal mode: names certmagic has cached

	// internal mode
	issuerKey string        // where certmagic stores the local CA's certificates
	newNames  *rate.Limiter // issuance for names allowed only by a wildcard
}

// localHosts are the names internal mode serves to loopback clients.
var localHosts = newHostSet(localNames)

// New names under a wildcard (configured, or *.localhost) are issued at
// this rate, so a client inventing names cannot fill the disk.
const (
	newNameBurst = 20
	newNameEvery = 3 * time.Second
)

// state is what Update swaps.
type state struct {
	hosts hostSet // configured names (acme, internal)

	// files mode
	fileHashes  []string // cache keys of the loaded pairs
	defaultName string   // a name of the first pair, served to clients without SNI
}

// settings are the TLS options that need a restart to change.
type settings struct {
	mode      config.TLSMode
	storage   string
	ca        string
	caRoot    string
	email     string
	httpOn    bool
	httpPort  int
	httpsPort int
}

// options are knobs for tests.
type options struct {
	disableHTTP01    bool             // acme: never use the HTTP-01 challenge
	disableTLSALPN01 bool             // acme: never use the TLS-ALPN-01 challenge
	now              func() time.Time // clock of the once-per-cause logging
}

// New starts serving certificates for cfg, whose TLS.Mode must not be off.
// In acme mode it starts obtaining (or loading from storage) a certificate
// for every configured host in the background and returns at once; the
// first handshakes for a name fail until its certificate is there.
//
// HTTP-01 challenges are answered by HTTPHandler, TLS-ALPN-01 challenges by
// TLSConfig's GetCertificate, so in acme mode bind both listeners before
// calling New: if a challenge finds a port free, certmagic binds it itself
// for the duration of the challenge.
//
// ctx bounds only what New does before it returns (creating the internal CA,
// loading files); background work runs until Stop. Records go to logger
// (nil discards them), certmagic's own at warn level and above.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Manager, error) {
	return newManager(ctx, cfg, logger, options{})
}

func newManager(ctx context.Context, cfg *config.Config, logger *slog.Logger, opts options) (*Manager, error) {
	if cfg == nil {
		return nil, errors.New("starting tls: no configuration")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	st, err := settingsOf(cfg)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		logger:   logger,
		settings: st,
		cached:   make(map[string]struct{}),
	}
	m.causes = newCauseLog(logger, opts.now)
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	m.zap = newZapLogger(m.causes, func() bool { return m.ctx.Err() != nil })

	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			if c := m.magicForCache.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("tls manager is starting")
		},
		Logger: m.zap,
	})
	template := certmagic.Config{
		Storage: &certmagic.FileStorage{Path: st.storage},
		Logger:  m.zap,
		OnEvent: m.onEvent,
	}

	switch st.mode {
	case config.TLSACME:
		err = m.setupACME(cfg, template, opts)
	case config.TLSInternal:
		err = m.setupInternal(cfg, template)
	case config.TLSFiles:
		err = m.setupFiles(ctx, cfg, template)
	}
	if err != nil {
		m.cancel()
		m.cache.Stop()
		return nil, err
	}
	m.magicForCache.Store(m.magic)
	return m, nil
}

// settingsOf extracts and checks the restart-only settings of cfg.
func settingsOf(cfg *config.Config) (settings, error) {
	s := settings{
		mode:    cfg.TLS.Mode,
		storage: storageDir(cfg.TLS.Storage),
	}
	switch s.mode {
	case config.TLSACME:
		s.ca, s.caRoot, s.email = cfg.TLS.CA, cfg.TLS.CARoot, cfg.TLS.Email
		s.httpOn = cfg.Listen.HTTP != ""
		var err error
		if s.httpOn {
			if s.httpPort, err = listenPort(cfg.Listen.HTTP, 80); err != nil {
				return s, fmt.Errorf("starting tls: listen.http: %w", err)
			}
		}
		if s.httpsPort, err = listenPort(cfg.Listen.HTTPS, 443); err != nil {
			return s, fmt.Errorf("starting tls: listen.https: %w", err)
		}
	case config.TLSInternal, config.TLSFiles:
	case config.TLSOff, "":
		return s, errors.New("starting tls: tls.mode is off; nothing to manage")
	default:
		return s, fmt.Errorf("starting tls: unknown tls.mode %q", s.mode)
	}
	return s, nil
}

// listenPort returns the port of a listen address; def when it has none.
func listenPort(addr string, def int) (int, error) {
	if addr == "" {
		return def, nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	if port == "" {
		return def, nil
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return 0, err
	}
	return p, nil
}

func (m *Manager) setupACME(cfg *config.Config, template certmagic.Config, opts options) error {
	var roots *x509.CertPool
	if m.settings.caRoot != "" {
		pemBytes, err := os.ReadFile(m.settings.caRoot)
		if err != nil {
			return fmt.Errorf("reading tls.ca_root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("reading tls.ca_root %q: no PEM certificate in it", m.settings.caRoot)
		}
	}
	// No OnDemand: names not configured are never requested.
	m.magic = certmagic.New(m.cache, template)
	m.acme = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:                      m.settings.ca,
		Email:                   m.settings.email,
		Agreed:                  true, // choosing the CA in the config is the agreement; nobody is at a prompt
		TrustedRoots:            roots,
		DisableHTTPChallenge:    !m.settings.httpOn || opts.disableHTTP01,
		DisableTLSALPNChallenge: opts.disableTLSALPN01,
		// certmagic answers challenges on these ports itself only when
		// nothing listens there; normally sluice's listeners do.
		AltHTTPPort:    m.settings.httpPort,
		AltTLSALPNPort: m.settings.httpsPort,
		Logger:         m.zap,
	})
	m.magic.Issuers = []certmagic.Issuer{m.acme}
	m.magicForCache.Store(m.magic)

	hosts := newHostSet(configuredHosts(cfg))
	m.state.Store(&state{hosts: hosts})
	m.warnWildcards(hosts)
	if names := hosts.exactNames(); len(names) > 0 {
		if err := m.magic.ManageAsync(m.ctx, names); err != nil {
			return fmt.Errorf("starting certificate management: %w", err)
		}
	} else {
		m.logger.Warn("tls mode acme but no route names a host; no certificate will be obtained")
	}
	return nil
}

// warnWildcards says, in acme mode, which configured hosts get no
// certificate.
func (m *Manager) warnWildcards(hosts hostSet) {
	if w := hosts.wildcards(); len(w) > 0 {
		m.logger.Warn("acme mode obtains no certificates for wildcard hosts; list each name, or use tls mode files",
			slog.Any("hosts", w))
	}
}

func (m *Manager) setupInternal(cfg *config.Config, template certmagic.Config) error {
	ca, err := loadOrCreateCA(m.settings.storage)
	if err != nil {
		return err
	}
	m.state.Store(&state{hosts: newHostSet(configuredHosts(cfg))})
	m.newNames = rate.NewLimiter(rate.Every(newNameEvery), newNameBurst)
	issuer := newInternalIssuer(ca, m.allows, leafLifetime)
	m.issuerKey = issuer.IssuerKey()
	template.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.decide}
	template.Issuers = []certmagic.Issuer{issuer}
	template.OCSP = certmagic.OCSPConfig{DisableStapling: true} // the local CA runs no OCSP responder
	template.DisableARI = true
	m.magic = certmagic.New(m.cache, template)
	return nil
}

func (m *Manager) setupFiles(ctx context.Context, cfg *config.Config, template certmagic.Config) error {
	template.Issuers = []certmagic.Issuer{noIssuer{}}
	m.magic = certmagic.New(m.cache, template)
	m.state.Store(&state{})
	return m.loadFiles(ctx, cfg.TLS.Certificates)
}

// loadFiles puts pairs in the cache and, once all are loaded, drops the
// pairs loaded before that are no longer wanted. On error nothing changes.
func (m *Manager) loadFiles(ctx context.Context, pairs []config.CertFile) error {
	if len(pairs) == 0 {
		return errors.New("loading tls.certificates: files mode needs at least one certificate")
	}
	old := m.state.Load()
	var hashes []string
	var defaultName string
	undo := func() {
		var added []string
		for _, h := range hashes {
			if !slices.Contains(old.fileHashes, h) {
				added = append(added, h)
			}
		}
		m.cache.Remove(added)
	}
	for i, p := range pairs {
		h, leaf, err := m.loadPair(ctx, p)
		if err != nil {
			undo()
			return fmt.Errorf("loading tls.certificates[%d] (%s, %s): %w", i, p.Cert, p.Key, err)
		}
		if i == 0 {
			defaultName = firstName(leaf)
		}
		if left := time.Until(leaf.NotAfter); left < expiryWarning {
			// Files are renewed by someone else; say so before clients do.
			m.logger.Warn("certificate file expires soon or has expired; renew it and reload",
				slog.String("cert", p.Cert), slog.Time("not_after", leaf.NotAfter), slog.Duration("left", left.Round(time.Minute)))
		}
		hashes = append(hashes, h)
	}
	var stale []string
	for _, h := range old.fileHashes {
		if !slices.Contains(hashes, h) {
			stale = append(stale, h)
		}
	}
	m.state.Store(&state{fileHashes: hashes, defaultName: defaultName})
	m.cache.Remove(stale)
	return nil
}

// expiryWarning is how close to its expiry a certificate file is reported
// at load time (files mode does not renew).
const expiryWarning = 14 * 24 * time.Hour

// loadPair reads a pair once, checks it, and caches it; it returns the
// cache key and the leaf.
func (m *Manager) loadPair(ctx context.Context, p config.CertFile) (string, *x509.Certificate, error) {
	certPEM, err := os.ReadFile(p.Cert)
	if err != nil {
		return "", nil, err
	}
	keyPEM, err := os.ReadFile(p.Key)
	if err != nil {
		return "", nil, err
	}
	pair, err := cryptotls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return "", nil, err
	}
	h, err := m.magic.CacheUnmanagedCertificatePEMBytes(ctx, certPEM, keyPEM, nil)
	if err != nil {
		return "", nil, err
	}
	return h, pair.Leaf, nil
}

// firstName returns the name a certificate is looked up by for a client
// without SNI: its first DNS name, else its first IP address, else its
// common name.
func firstName(leaf *x509.Certificate) string {
	switch {
	case leaf == nil:
		return ""
	case len(leaf.DNSNames) > 0:
		return normalizeName(leaf.DNSNames[0])
	case len(leaf.IPAddresses) > 0:
		return normalizeName(leaf.IPAddresses[0].String())
	}
	return normalizeName(leaf.Subject.CommonName)
}

// noIssuer stands in for certmagic's default issuer in files mode, where
// nothing is obtained.
type noIssuer struct{}

func (noIssuer) IssuerKey() string { return "sluice-files" }

func (noIssuer) Issue(context.Context, *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	return nil, errors.New("tls mode files obtains no certificates")
}

// allows reports whether internal mode may issue a certificate for name
// (normalized) under the current configuration. Whether the client may
// ask for a local name is checked during the handshake.
func (m *Manager) allows(name string) bool {
	return m.state.Load().hosts.allows(name) || localHosts.allows(name)
}

var errTooManyNewNames = errors.New("too many new names under a wildcard; try again in a few seconds")

// decide is internal mode's on-demand decision, made before a certificate
// is loaded from storage or issued: with the handshake gate in
// getCertificate, it is what keeps a stranger's SNI from minting
// certificates.
func (m *Manager) decide(ctx context.Context, name string) error {
	n := normalizeName(name)
	if !m.allows(n) {
		return fmt.Errorf("%q is not localhost or a configured host", name)
	}
	if m.state.Load().hosts.allowsExact(n) || localHosts.allowsExact(n) {
		return nil // one of a fixed set of names
	}
	if m.magic.Storage.Exists(ctx, certmagic.StorageKeys.SiteCert(m.issuerKey, n)) {
		return nil // issued before; loading it costs no new files
	}
	if !m.newNames.Allow() {
		return errTooManyNewNames
	}
	return nil
}

// onEvent receives certmagic's events; it must return quickly. Failures
// need no event: certmagic logs them, with its retry schedule.
// OnEvent makes fn hear the name of every certificate event certmagic
// reports ("cert_obtaining", "cert_obtained", "cert_failed",
// "cached_managed_cert", ...), for metrics. fn must not block.
func (m *Manager) OnEvent(fn func(event string)) { m.eventHook.Store(&fn) }

func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	if fn := m.eventHook.Load(); fn != nil {
		(*fn)(event)
	}
	switch event {
	case "cert_obtained":
		m.logger.Info("certificate obtained",
			slog.Any("identifier", data["identifier"]),
			slog.Any("issuer", data["issuer"]),
			slog.Any("renewal", data["renewal"]))
	case "cached_managed_cert":
		if sans, ok := data["sans"].([]string); ok {
			m.cachedMu.Lock()
			for _, n := range sans {
				m.cached[n] = struct{}{}
			}
			m.cachedMu.Unlock()
		}
	}
	return nil
}

// TLSConfig returns a new TLS configuration for the https listener: its
// GetCertificate serves from the Manager's cache by SNI, NextProtos offers
// "h2" and "http/1.1" (plus "acme-tls/1" in acme mode, for TLS-ALPN-01),
// and MinVersion is TLS 1.2. The caller may change the copy it gets.
//
// Use it with net/http as http.Server{TLSConfig: m.TLSConfig(), ErrorLog:
// m.ServerErrorLog()} and ServeTLS(ln, "", ""), or wrap a listener with
// crypto/tls.NewListener.
func (m *Manager) TLSConfig() *cryptotls.Config {
	protos := []string{"h2", "http/1.1"}
	if m.acme != nil && !m.acme.DisableTLSALPNChallenge {
		protos = append(protos, acmeTLS1)
	}
	return &cryptotls.Config{
		MinVersion:     cryptotls.VersionTLS12,
		NextProtos:     protos,
		GetCertificate: m.getCertificate,
	}
}

// HTTPHandler returns a handler for the plain-HTTP listener that answers
// ACME HTTP-01 challenges (acme mode) and passes every other request to
// next, unchanged. Outside acme mode it returns next itself.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	if m.acme == nil {
		return next
	}
	return m.acme.HTTPChallengeHandler(next)
}

// ServerErrorLog returns a logger for http.Server.ErrorLog of the https
// server. TLS handshake errors (a client that does not trust the
// certificate, a port scanner, plain HTTP sent to the TLS port) are logged
// at info level once per cause per minute, handshakes already logged by
// the Manager (no certificate for the name) not again; other server errors
// are logged at error level, also once per cause per minute.
func (m *Manager) ServerErrorLog() *log.Logger {
	return newServerErrorLog(m.causes)
}

// fromLoopback reports whether the client connected from a loopback address.
func fromLoopback(c net.Conn) bool {
	if c == nil {
		return false
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func isTLSALPNChallenge(hello *cryptotls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmeTLS1
}

var errStopped = errors.New("tls manager stopped")

func (m *Manager) getCertificate(hello *cryptotls.ClientHelloInfo) (*cryptotls.Certificate, error) {
	if m.stopped.Load() {
		return nil, &certError{name: hello.ServerName, err: errStopped}
	}
	remote := ""
	if hello.Conn != nil {
		remote = hello.Conn.RemoteAddr().String()
	}
	if m.acme != nil && hello.ServerName != "" && isTLSALPNChallenge(hello) {
		// A CA validating TLS-ALPN-01; certmagic answers only names with
		// a challenge in progress, which are configured names.
		cert, err := m.magic.GetCertificate(hello)
		if err != nil {
			m.causes.log(slog.LevelInfo, "alpn|"+hello.ServerName, "refused tls-alpn-01 handshake",
				slog.String("server_name", hello.ServerName), slog.String("remote", remote), slog.Any("error", err))
			return nil, &certError{name: hello.ServerName, err: err}
		}
		return cert, nil
	}

	st := m.state.Load()
	name := normalizeName(hello.ServerName)
	if name == "" {
		name = localIP(hello.Conn)
	}
	switch m.settings.mode {
	case config.TLSFiles:
		if hello.ServerName == "" && st.defaultName != "" && len(m.cache.AllMatchingCertificates(name)) == 0 {
			// No SNI and no pair for the address dialled: the first pair.
			h := *hello
			h.ServerName = st.defaultName
			hello = &h
			name = st.defaultName
		}
		if len(m.cache.AllMatchingCertificates(name)) == 0 {
			return nil, m.unknownName(name, hello.ServerName, remote, "")
		}
	case config.TLSACME:
		if !st.hosts.allowsExact(name) {
			if st.hosts.allows(name) {
				return nil, m.wildcardName(name, remote)
			}
			return nil, m.unknownName(name, hello.ServerName, remote, "")
		}
	case config.TLSInternal:
		if !st.hosts.allows(name) {
			if !localHosts.allows(name) {
				return nil, m.unknownName(name, hello.ServerName, remote, "")
			}
			if !fromLoopback(hello.Conn) {
				return nil, m.unknownName(name, hello.ServerName, remote,
					"local names are served to clients on the loopback interface only; list the name in routes[].hosts")
			}
		}
	}

	cert, err := m.magic.GetCertificate(hello)
	if err != nil {
		msg := "no certificate to serve"
		if m.acme != nil {
			msg = "no certificate obtained yet for configured host"
		}
		key := "cert|" + name + "|" + err.Error()
		if errors.Is(err, errTooManyNewNames) {
			key = "cert|new-names-limited" // one cause, however many names
		}
		m.causes.log(slog.LevelWarn, key, msg,
			slog.String("server_name", name), slog.String("remote", remote), slog.Any("error", err))
		return nil, &certError{name: name, err: err}
	}
	return cert, nil
}

var errUnknownName = errors.New("not a configured host")

func (m *Manager) unknownName(name, sni, remote, hint string) error {
	attrs := []slog.Attr{slog.String("server_name", name), slog.String("remote", remote)}
	if sni == "" {
		attrs = append(attrs, slog.Bool("sni", false))
	}
	if hint != "" {
		attrs = append(attrs, slog.String("hint", hint))
	}
	m.causes.log(slog.LevelInfo, "unknown|"+name, "tls handshake for unknown server name refused", attrs...)
	return &certError{name: name, err: errUnknownName}
}

var errWildcard = errors.New("acme mode obtains no certificates for wildcard hosts")

func (m *Manager) wildcardName(name, remote string) error {
	m.causes.log(slog.LevelWarn, "wildcard|"+name, "no certificate for a host under a wildcard route",
		slog.String("server_name", name), slog.String("remote", remote),
		slog.String("hint", "acme mode obtains certificates for exact host names only; list the name or use tls mode files"))
	return &certError{name: name, err: errWildcard}
}

// Update applies a reloaded configuration: in acme mode it starts managing
// newly configured hosts and stops serving and renewing removed ones; in
// internal mode it changes which names may get certificates; in files mode
// it reloads every pair from disk (so renewed files take effect). If cfg
// changes a setting that needs a restart, Update returns an error wrapping
// ErrRestartRequired and changes nothing; on any error the Manager keeps
// serving as before.
func (m *Manager) Update(ctx context.Context, cfg *config.Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped.Load() {
		return errors.New("updating tls: manager is stopped")
	}
	if cfg == nil {
		return errors.New("updating tls: no configuration")
	}
	if err := m.checkRestartOnly(cfg); err != nil {
		return err
	}
	switch m.settings.mode {
	case config.TLSACME:
		old := m.state.Load().hosts
		hosts := newHostSet(configuredHosts(cfg))
		var removed []certmagic.SubjectIssuer
		var addedNames []string
		for _, n := range hosts.exactNames() {
			if !old.allowsExact(n) {
				addedNames = append(addedNames, n)
			}
		}
		for _, n := range old.exactNames() {
			if !hosts.allowsExact(n) {
				removed = append(removed, certmagic.SubjectIssuer{Subject: n})
			}
		}
		m.state.Store(&state{hosts: hosts})
		m.cache.RemoveManaged(removed)
		if !slices.Equal(hosts.wildcards(), old.wildcards()) {
			m.warnWildcards(hosts)
		}
		if len(addedNames) > 0 {
			if err := m.magic.ManageAsync(m.ctx, addedNames); err != nil {
				return fmt.Errorf("updating tls: starting certificate management: %w", err)
			}
		}
	case config.TLSInternal:
		hosts := newHostSet(configuredHosts(cfg))
		m.state.Store(&state{hosts: hosts})
		var removed []certmagic.SubjectIssuer
		m.cachedMu.Lock()
		for n := range m.cached {
			if !m.allows(normalizeName(n)) {
				removed = append(removed, certmagic.SubjectIssuer{Subject: n})
				delete(m.cached, n)
			}
		}
		m.cachedMu.Unlock()
		m.cache.RemoveManaged(removed)
	case config.TLSFiles:
		if err := m.loadFiles(ctx, cfg.TLS.Certificates); err != nil {
			return fmt.Errorf("updating tls: %w", err)
		}
	}
	return nil
}

func (m *Manager) checkRestartOnly(cfg *config.Config) error {
	s, err := settingsOf(cfg)
	if err != nil {
		return fmt.Errorf("updating tls: %w", err)
	}
	old := m.settings
	changed := func(field, from, to string) error {
		return fmt.Errorf("updating tls: %s changed from %q to %q: %w", field, from, to, ErrRestartRequired)
	}
	switch {
	case s.mode != old.mode:
		return changed("tls.mode", string(old.mode), string(s.mode))
	case s.storage != old.storage && s.mode != config.TLSFiles:
		return changed("tls.storage", old.storage, s.storage)
	case s.mode != config.TLSACME:
		return nil
	case s.ca != old.ca:
		return changed("tls.ca", old.ca, s.ca)
	case s.caRoot != old.caRoot:
		return changed("tls.ca_root", old.caRoot, s.caRoot)
	case s.email != old.email:
		return changed("tls.email", old.email, s.email)
	case s.httpOn != old.httpOn:
		return changed("listen.http (on/off)", strconv.FormatBool(old.httpOn), strconv.FormatBool(s.httpOn))
	}
	return nil
}

// Stop ends background certificate work (obtaining, renewal); handshakes
// after Stop fail. It waits for certmagic's
// maintenance goroutine; ACME operations in flight are cancelled and end
// shortly after. Stop is idempotent.
func (m *Manager) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped.Load() {
		return
	}
	m.stopped.Store(true)
	m.cancel()
	m.cache.Stop()
	old := m.state.Swap(&state{})
	m.cache.Remove(old.fileHashes)
}
