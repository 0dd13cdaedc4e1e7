// Package server runs a sluice configuration: it binds the public and admin
// listeners, puts the proxy handler and the certificate manager behind them,
// applies reloads and shuts everything down gracefully. It is what
// cmd/sluice wires to flags and signals.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
	"github.com/sluice-proxy/sluice/proxy"
)

// Options are a Server's collaborators.
type Options struct {
	// Logger is the process log. nil discards.
	Logger *slog.Logger
	// Level, when set, is adjusted to log.level on start and on reload.
	Level *slog.LevelVar
	// Stdout and Stderr are where `log.access: stdout|stderr` go; nil means
	// os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
}

// Server serves one configuration at a time.
type Server struct {
	opts    Options
	log     *slog.Logger
	access  *accessSink
	handler *proxy.Handler
	certs   *certs
	metrics *metrics.Metrics

	mu        sync.Mutex // serialises Start, Reload and Shutdown
	cfg       *config.Config
	listeners map[string]*listener // "http", "https", "admin"
	shutting  atomic.Bool
	httpsPort atomic.Value // string: the https listener's bound port, for redirects
	errc      chan error   // a listener that failed while serving

	stopMemory context.CancelFunc // ends releaseMemory
	memoryDone chan struct{}
}

// listener is one bound address and what serves it: sluice's own HTTP/1
// server on the public listeners (with net/http's HTTP/2 server behind
// the TLS one), net/http on the admin listener.
type listener struct {
	name string
	addr string // as configured
	ln   net.Listener
	srv  *http.Server      // admin, and HTTP/2 on https
	cs   *proxy.ConnServer // http and https
	h2   *chanListener     // feeds srv the connections that chose h2
	done chan struct{}     // closed when Serve has returned
}

// shutdown stops the listener gracefully within ctx, then closes what is
// left.
func (l *listener) shutdown(ctx context.Context) error {
	var err error
	if l.cs != nil {
		err = l.cs.Shutdown(ctx)
	}
	if l.srv != nil {
		if e := l.srv.Shutdown(ctx); e != nil {
			l.srv.Close()
			err = cmp.Or(err, e)
		}
	}
	if l.h2 != nil {
		l.h2.Close()
	}
	return err
}

// New prepares a Server for cfg without binding anything.
func New(cfg *config.Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		cfg:       cfg,
		listeners: map[string]*listener{},
		errc:      make(chan error, 3),
	}
	if opts.Level != nil {
		opts.Level.Set(cfg.Log.Level)
	}
	access, err := newAccessSink(cfg.Log.Access, opts.Stdout, opts.Stderr)
	if err != nil {
		return nil, err
	}
	s.access = access
	s.metrics = metrics.New()
	s.handler = proxy.New(cfg, proxy.Options{Logger: s.log, AccessLog: access.logger(), Metrics: s.metrics})
	return s, nil
}

// Start binds every listener of the configuration and serves on them. If
// any address cannot be bound, nothing is left listening and the error says
// which.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := s.wantedListeners(s.cfg)
	bound, err := bindAll(want)
	if err != nil {
		return err
	}
	// Certificates after binding: ACME challenges must find our listeners.
	if s.certs, err = newCerts(s.cfg, s.log, s.metrics); err != nil {
		for _, ln := range bound {
			ln.Close()
		}
		return err
	}
	for name, ln := range bound {
		s.serve(name, want[name], ln)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopMemory, s.memoryDone = cancel, make(chan struct{})
	go func() {
		defer close(s.memoryDone)
		releaseMemory(ctx, memoryCheckEvery)
	}()
	return nil
}

// Err delivers an error when a listener stops serving on its own (not by
// Reload or Shutdown).
func (s *Server) Err() <-chan error { return s.errc }

// Addr returns the bound address of the named listener ("http", "https",
// "admin"), or "" when it is off. With port 0 in the configuration, this is
// where the port chosen by the system can be found.
func (s *Server) Addr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.listeners[name]; l != nil {
		return l.ln.Addr().String()
	}
	return ""
}

// Handler returns the proxy handler serving the public listeners.
func (s *Server) Handler() *proxy.Handler { return s.handler }

// wantedListeners returns the configured address of each listener that
// should run.
func (s *Server) wantedListeners(cfg *config.Config) map[string]string {
	want := map[string]string{}
	if cfg.Listen.HTTP != "" {
		want["http"] = cfg.Listen.HTTP
	}
	if cfg.Listen.HTTPS != "" {
		want["https"] = cfg.Listen.HTTPS
	}
	if cfg.Admin.Listen != "" {
		want["admin"] = cfg.Admin.Listen
	}
	return want
}

func bindAll(addrs map[string]string) (map[string]net.Listener, error) {
	bound := map[string]net.Listener{}
	for name, addr := range addrs {
		ln, err := listenTCP(addr)
		if err != nil {
			for _, l := range bound {
				l.Close()
			}
			return nil, fmt.Errorf("listen.%s %q: %w", name, addr, err)
		}
		bound[name] = ln
	}
	return bound, nil
}

// serve starts serving the named listener on ln.
func (s *Server) serve(name, addr string, ln net.Listener) {
	l := &listener{name: name, addr: addr, ln: ln, done: make(chan struct{})}
	s.listeners[name] = l
	s.log.Info("listening", "listener", name, "addr", ln.Addr().String())
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	var run func() error
	switch name {
	case "admin":
		t := s.cfg.Timeouts
		l.srv = &http.Server{
			Handler:           s.adminHandler(),
			ReadHeaderTimeout: t.ReadHeader,
			IdleTimeout:       t.Idle,
			MaxHeaderBytes:    proxy.MaxHeaderBytes,
			ErrorLog:          errLog,
		}
		run = func() error { return l.srv.Serve(ln) }
	case "https":
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		s.httpsPort.Store(port)
		// HTTP/2 clients go to net/http's server, which sets up h2 for
		// the *tls.Conns it is handed.
		l.h2 = newChanListener(ln.Addr())
		l.srv = &http.Server{
			Handler:           http.HandlerFunc(s.serveHTTPS),
			ReadHeaderTimeout: s.cfg.Timeouts.ReadHeader,
			IdleTimeout:       s.cfg.Timeouts.Idle,
			MaxHeaderBytes:    proxy.MaxHeaderBytes,
			ErrorLog:          s.certs.errorLog(),
		}
		go l.srv.Serve(l.h2)
		l.cs = s.handler.NewConnServer(proxy.ConnOptions{
			TLS:         true,
			ExtraHeader: s.appendHSTS,
			H2:          func(c *tls.Conn) { l.h2.deliver(c) },
			Logger:      s.log,
		})
		tlsConfig := s.certs.tlsConfig()
		run = func() error { return l.cs.Serve(ln, tlsConfig) }
	default:
		l.cs = s.handler.NewConnServer(proxy.ConnOptions{
			Fallback: s.plainFallback,
			Logger:   s.log,
		})
		run = func() error { return l.cs.Serve(ln, nil) }
	}
	go func() {
		defer close(l.done)
		err := run()
		if !errors.Is(err, http.ErrServerClosed) {
			select {
			case s.errc <- fmt.Errorf("listener %s on %s: %w", name, addr, err):
			default:
			}
		}
	}()
}

// plainFallback serves the plain listener when TLS is on: ACME challenges,
// and a redirect to https for everything else.
func (s *Server) plainFallback() http.Handler {
	if s.handler.Config().TLS.Mode == config.TLSOff {
		return nil
	}
	port, _ := s.httpsPort.Load().(string)
	return s.certs.httpHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirectToHTTPS(w, r, port)
	}))
}

// appendHSTS adds Strict-Transport-Security to https responses when
// tls.hsts is set.
func (s *Server) appendHSTS(b []byte) []byte {
	hsts := s.handler.Config().TLS.HSTS
	if hsts <= 0 {
		return b
	}
	b = append(b, "Strict-Transport-Security: max-age="...)
	b = strconv.AppendInt(b, int64(hsts/time.Second), 10)
	return append(b, "\r\n"...)
}

// serveHTTPS serves HTTP/2 requests on the https listener (HTTP/1 ones
// go through the ConnServer, which adds HSTS itself).
func (s *Server) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	if hsts := s.handler.Config().TLS.HSTS; hsts > 0 {
		w.Header().Set("Strict-Transport-Security", "max-age="+strconv.FormatInt(int64(hsts/time.Second), 10))
	}
	s.handler.ServeHTTP(w, r)
}

// redirectToHTTPS answers 308 to the same path and query on https, naming
// the https listener's port unless it is 443.
func redirectToHTTPS(w http.ResponseWriter, r *http.Request, httpsPort string) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" {
		http.Error(w, "no Host header to redirect to", http.StatusBadRequest)
		return
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		host = "[" + host + "]"
	}
	if httpsPort != "" && httpsPort != "443" {
		host += ":" + httpsPort
	}
	target := "https://" + host + r.URL.RequestURI()
	w.Header().Set("Location", target)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusPermanentRedirect)
	io.WriteString(w, "moved to "+target+"\n")
}

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.shutting.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", s.metrics.Handler())
	return mux
}

// Reload makes cfg the served configuration. Requests and sessions in
// flight are not disturbed. Listeners whose address did not change stay
// open; a changed one is bound anew before the old one is closed, and if it
// cannot be bound the reload is refused and the old configuration stays.
func (s *Server) Reload(cfg *config.Config) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() { s.metrics.Reload(err == nil) }()
	if s.shutting.Load() {
		return errors.New("reload refused: shutting down")
	}
	old := s.wantedListeners(s.cfg)
	want := s.wantedListeners(cfg)
	changed := map[string]string{}
	for name, addr := range want {
		if old[name] != addr {
			changed[name] = addr
		}
	}
	if err := s.certs.update(cfg); err != nil {
		return err
	}
	bound, err := bindAll(changed)
	if err != nil {
		return fmt.Errorf("reload refused: %w", err)
	}
	// Re-opening also follows a log file that logrotate moved away.
	if err := s.access.reopen(cfg.Log.Access); err != nil {
		for _, ln := range bound {
			ln.Close()
		}
		return fmt.Errorf("reload refused: %w", err)
	}
	s.handler.SetAccessLog(s.access.logger())
	s.handler.Apply(cfg)
	if s.opts.Level != nil {
		s.opts.Level.Set(cfg.Log.Level)
	}
	s.cfg = cfg
	// Close listeners that moved or went away, gracefully: their
	// in-flight requests finish; new connections go to the new address.
	for name, l := range s.listeners {
		if want[name] == l.addr {
			continue
		}
		delete(s.listeners, name)
		go s.closeListener(l, cfg.Timeouts.Shutdown)
	}
	for name, ln := range bound {
		s.serve(name, want[name], ln)
	}
	return nil
}

func (s *Server) closeListener(l *listener, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	l.shutdown(ctx)
	<-l.done
	s.log.Info("stopped listening", "listener", l.name, "addr", l.addr)
}

// RefuseReload records a reload that failed before reaching Reload, such as
// a file with errors.
func (s *Server) RefuseReload() { s.metrics.Reload(false) }

// Shutdown stops accepting connections, answers /healthz with 503, ends
// WebSocket sessions with close 1001, lets in-flight requests finish until
// ctx is done, then closes what is left. It returns ctx's error if requests
// had to be cut off.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutting.Store(true)
	var firstErr error
	// Hijacked WebSocket connections are invisible to http.Server.Shutdown:
	// end them (close 1001 both ways) alongside the listeners.
	wsDone := make(chan error, 1)
	go func() { wsDone <- s.handler.CloseSessions(ctx) }()
	// Public listeners first; the admin listener last, so /healthz can say
	// 503 while the rest drains.
	for _, name := range []string{"http", "https", "admin"} {
		l := s.listeners[name]
		if l == nil {
			continue
		}
		if err := l.shutdown(ctx); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("listener %s: in-flight requests cut off: %w", name, err)
			}
		}
		<-l.done
		delete(s.listeners, name)
	}
	if err := <-wsDone; err != nil && firstErr == nil {
		firstErr = fmt.Errorf("websocket sessions cut off: %w", err)
	}
	s.handler.Close()
	s.certs.stop()
	if s.stopMemory != nil {
		s.stopMemory()
		<-s.memoryDone
	}
	s.access.Close()
	return firstErr
}
