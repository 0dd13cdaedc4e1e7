package server

import (
	"context"
	cryptotls "crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/metrics"
	sluicetls "github.com/sluice-proxy/sluice/tls"
)

// certs is the certificate manager of a server with TLS on; its methods are
// no-ops on a nil *certs (TLS off).
type certs struct {
	m *sluicetls.Manager
}

// newCerts starts the certificate manager for cfg, or returns nil when TLS
// is off. In acme mode the listeners must already be bound, so that
// challenges reach them.
func newCerts(cfg *config.Config, logger *slog.Logger, m *metrics.Metrics) (*certs, error) {
	if cfg.TLS.Mode == config.TLSOff {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mgr, err := sluicetls.New(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	mgr.OnEvent(m.CertEvent)
	return &certs{m: mgr}, nil
}

func (c *certs) tlsConfig() *cryptotls.Config { return c.m.TLSConfig() }

func (c *certs) errorLog() *log.Logger { return c.m.ServerErrorLog() }

// httpHandler answers ACME challenges and passes the rest to next.
func (c *certs) httpHandler(next http.Handler) http.Handler { return c.m.HTTPHandler(next) }

func (c *certs) update(cfg *config.Config) error {
	switch {
	case c == nil && cfg.TLS.Mode == config.TLSOff:
		return nil
	case c == nil || cfg.TLS.Mode == config.TLSOff:
		return errors.New("reload refused: turning TLS on or off needs a restart")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.m.Update(ctx, cfg); err != nil {
		return fmt.Errorf("reload refused: %w", err)
	}
	return nil
}

func (c *certs) stop() {
	if c != nil {
		c.m.Stop()
	}
}
