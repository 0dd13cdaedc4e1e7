// Command sluice is a reverse proxy for HTTP and WebSocket services,
// configured by one YAML file. See `sluice help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/server"
	sluicetls "github.com/sluice-proxy/sluice/tls"
)

// Exit codes (SPEC): 0 ok, 1 bad config or runtime failure, 2 bad usage.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version or VCS revision is reported.
var version = ""

const usage = `sluice: a reverse proxy for HTTP and WebSocket services

Usage:
  sluice run      [-config FILE]   serve (default FILE: ./sluice.yaml)
  sluice validate [-config FILE]   check the file, print every problem, exit 1 if any
  sluice demo                      local HTTPS proxy with built-in demo backends
  sluice trust    [-config FILE]   install the internal CA root into the system trust store
  sluice version                   print the version

Signals (run): SIGHUP reloads the config; SIGTERM or SIGINT shut down gracefully.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(args, stdout, stderr)
	case "validate":
		return cmdValidate(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "trust":
		return cmdTrust(args, stdout, stderr)
	case "version", "-version", "--version":
		if len(args) > 0 {
			// A stray word is a typo or a misplaced option: say so
			// rather than ignore it, as the other commands do.
			fmt.Fprintf(stderr, "sluice version: unexpected argument %q\n", args[0])
			return exitUsage
		}
		fmt.Fprintln(stdout, "sluice", versionString())
		return exitOK
	case "help", "-h", "-help", "--help":
		// "sluice help run" gets the one page, which covers every command.
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// parseConfigFlag parses the -config flag shared by run, validate and trust.
func parseConfigFlag(name string, args []string, stderr io.Writer) (path string, code int, ok bool) {
	fs := flag.NewFlagSet("sluice "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&path, "config", "sluice.yaml", "configuration `FILE`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", exitOK, false
		}
		return "", exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", exitUsage, false
	}
	return path, exitOK, true
}

// loadFromFlags parses -config and loads the file, printing what is wrong
// with either. A nil config comes with the exit code to return.
func loadFromFlags(name string, args []string, stderr io.Writer) (cfg *config.Config, path string, code int) {
	path, code, ok := parseConfigFlag(name, args, stderr)
	if !ok {
		return nil, path, code
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, path, exitFailure
	}
	return cfg, path, exitOK
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	cfg, path, code := loadFromFlags("validate", args, stderr)
	if cfg == nil {
		return code
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes, tls %s)\n", path, len(cfg.Routes), cfg.TLS.Mode)
	return exitOK
}

func cmdTrust(args []string, stdout, stderr io.Writer) int {
	cfg, _, code := loadFromFlags("trust", args, stderr)
	if cfg == nil {
		return code
	}
	if cfg.TLS.Mode != config.TLSInternal {
		fmt.Fprintf(stderr, "sluice trust: tls.mode is %s; only the internal CA (tls.mode: internal) has a root to trust\n", cfg.TLS.Mode)
		return exitFailure
	}
	return trustStorage(cfg.TLS.Storage, stdout, stderr)
}

func trustStorage(storage string, stdout, stderr io.Writer) int {
	if err := sluicetls.InstallRoot(storage); err != nil {
		fmt.Fprintln(stderr, "sluice trust:", err)
		return exitFailure
	}
	root, _ := sluicetls.RootCertificate(storage)
	fmt.Fprintf(stdout, "installed the sluice local CA root %s in the system trust store\n", root)
	return exitOK
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	cfg, path, code := loadFromFlags("run", args, stderr)
	if cfg == nil {
		return code
	}
	level := new(slog.LevelVar)
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv, err := server.New(cfg, server.Options{Logger: logger, Level: level, Stdout: stdout, Stderr: stderr})
	if err != nil {
		logger.Error("cannot start", "err", err)
		return exitFailure
	}
	return serve(srv, logger, func() (*config.Config, error) { return config.Load(path) })
}

// serve starts srv and runs it until a signal or a listener failure:
// SIGHUP reloads with load, SIGTERM and SIGINT shut down gracefully (a second
// one stops at once).
func serve(srv *server.Server, logger *slog.Logger, load func() (*config.Config, error)) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if err := srv.Start(); err != nil {
		logger.Error("cannot start", "err", err)
		return exitFailure
	}
	logger.Info("sluice started", "version", versionString(), "pid", os.Getpid())
	for {
		select {
		case err := <-srv.Err():
			logger.Error("listener failed; shutting down", "err", err)
			shutdown(srv, logger, sigs)
			return exitFailure
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				logger.Info("shutting down", "signal", sig.String())
				return shutdown(srv, logger, sigs)
			}
			cfg, err := load()
			if err != nil {
				srv.RefuseReload()
				// Every problem on its own line, then carry on with the old
				// configuration.
				for _, line := range strings.Split(err.Error(), "\n") {
					logger.Error("reload refused: bad config; still serving the previous one", "problem", line)
				}
				continue
			}
			if err := srv.Reload(cfg); err != nil {
				logger.Error("reload refused; still serving the previous config", "err", err)
				continue
			}
			logger.Info("config reloaded", "routes", len(cfg.Routes))
		}
	}
}

func shutdown(srv *server.Server, logger *slog.Logger, sigs <-chan os.Signal) int {
	grace := srv.Handler().Config().Timeouts.Shutdown
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	hard := time.NewTimer(grace + 5*time.Second)
	defer hard.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				logger.Warn("shutdown grace period ended", "err", err)
			}
			logger.Info("stopped")
			return exitOK
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				logger.Warn("second signal: stopping now", "signal", sig.String())
				cancel()
			}
		case <-hard.C:
			logger.Error("shutdown did not finish; exiting")
			return exitFailure
		}
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
