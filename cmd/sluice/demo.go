package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/demo"
	"github.com/sluice-proxy/sluice/server"
	sluicetls "github.com/sluice-proxy/sluice/tls"
)

// cmdDemo starts the demo backends and sluice in front of them with the
// internal CA, prints what to try, and serves until a signal.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpsAddr := fs.String("https", "127.0.0.1:8443", "https listen `address`")
	httpAddr := fs.String("http", "127.0.0.1:8080", "plain-HTTP listen `address` (redirects to https)")
	adminAddr := fs.String("admin", "127.0.0.1:9901", "admin listen `address`")
	dir := fs.String("dir", defaultDemoDir(), "`directory` for the demo's config and local CA")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice demo: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	level := new(slog.LevelVar)
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	backends, err := demo.Start(logger)
	if err != nil {
		logger.Error("cannot start the demo", "err", err)
		return exitFailure
	}
	defer backends.Close()
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		logger.Error("cannot create the demo directory", "dir", *dir, "err", err)
		return exitFailure
	}
	storage := filepath.Join(*dir, "data")
	yaml := backends.Config(*httpAddr, *httpsAddr, *adminAddr, storage)
	path := filepath.Join(*dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		logger.Error("cannot write the demo config", "path", path, "err", err)
		return exitFailure
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	root, err := sluicetls.RootCertificate(cfg.TLS.Storage)
	if err != nil {
		logger.Error("cannot create the local CA", "err", err)
		return exitFailure
	}
	srv, err := server.New(cfg, server.Options{Logger: logger, Level: level, Stdout: stdout, Stderr: stderr})
	if err != nil {
		logger.Error("cannot start", "err", err)
		return exitFailure
	}
	base := "https://localhost" + portSuffix(*httpsAddr)
	fmt.Fprintf(stdout, `sluice demo: a proxy with TLS from a local CA, in front of three demo backends.

Try:
  open %[1]s/               the demo page (WebSocket and SSE from the browser)
  curl --cacert %[2]s %[1]s/api/hello
  curl --cacert %[2]s -N %[1]s/events
  websocat --ca-file %[2]s wss://localhost%[3]s/ws   (or any WebSocket client)
  curl http://127.0.0.1:%[4]s/healthz         (admin)

To make browsers and curl trust the local CA without --cacert:
  sudo sluice trust -config %[5]s

The configuration in use (%[5]s):
---
%[6]s---
Stop with Ctrl-C. Access log lines follow.
`, base, root, portSuffix(*httpsAddr), port(*adminAddr), path, yaml)
	return serve(srv, logger, func() (*config.Config, error) { return config.Load(path) })
}

// defaultDemoDir keeps the demo's CA across runs, so trusting it once is
// enough.
func defaultDemoDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sluice", "demo")
	}
	return filepath.Join(os.TempDir(), "sluice-demo")
}

func port(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return addr
}

// portSuffix is ":PORT" unless the port is 443.
func portSuffix(addr string) string {
	if p := port(addr); p != "443" {
		return ":" + p
	}
	return ""
}
