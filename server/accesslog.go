package server

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// accessSink is where access-log records go. Its target can be re-opened on
// reload (a new file, or the same path after logrotate moved it) without
// losing records of requests that span the reload.
type accessSink struct {
	stdout, stderr io.Writer

	mu     sync.RWMutex // writers hold it shared; reopen holds it exclusively
	target string
	w      io.Writer
	f      *os.File // the open file when target is a path
	log    *slog.Logger
}

func newAccessSink(target string, stdout, stderr io.Writer) (*accessSink, error) {
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	a := &accessSink{stdout: stdout, stderr: stderr}
	a.log = slog.New(slog.NewJSONHandler(a, &slog.HandlerOptions{ReplaceAttr: dropLevel}))
	if err := a.reopen(target); err != nil {
		return nil, err
	}
	return a, nil
}

// dropLevel leaves the level out of access records: they are all info.
func dropLevel(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.LevelKey {
		return slog.Attr{}
	}
	return a
}

// reopen points the sink at target, re-opening a file even when the path is
// unchanged.
func (a *accessSink) reopen(target string) error {
	var w io.Writer
	var f *os.File
	switch target {
	case "off", "":
		w = io.Discard
	case "stdout":
		w = a.stdout
	case "stderr":
		w = a.stderr
	default:
		var err error
		f, err = os.OpenFile(target, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("log.access: opening %q: %w", target, err)
		}
		w = f
	}
	a.mu.Lock()
	old := a.f
	a.target, a.w, a.f = target, w, f
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (a *accessSink) Write(p []byte) (int, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.w.Write(p)
}

// logger returns the access logger, or nil when the access log is off, so
// that the proxy skips building records nobody reads.
func (a *accessSink) logger() *slog.Logger {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.target == "off" || a.target == "" {
		return nil
	}
	return a.log
}

func (a *accessSink) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w = io.Discard
	if a.f != nil {
		err := a.f.Close()
		a.f = nil
		return err
	}
	return nil
}
