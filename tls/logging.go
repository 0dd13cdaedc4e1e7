package tls

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Handshake failures come in floods: one scanner, one misconfigured client
// or one stranger's SNI can fail thousands of handshakes a minute, all for the
// same reason. causeLog lets one line per cause through per window and
// counts the rest, so the log says what is wrong without drowning.
const (
	causeWindow = time.Minute
	// maxCauses bounds the distinct causes remembered per window; it also
	// bounds the lines a flood of distinct causes (random SNI names) can
	// produce per window.
	maxCauses = 256
)

// causeLog logs a message at most once per cause per window. It is safe for
// concurrent use.
type causeLog struct {
	logger *slog.Logger
	window time.Duration
	max    int
	now    func() time.Time

	mu         sync.Mutex
	seen       map[string]*cause
	overflowAt time.Time // when the last "too many causes" line was logged
}

type cause struct {
	last       time.Time // when this cause was last logged
	suppressed int       // occurrences not logged since then
}

func newCauseLog(logger *slog.Logger, now func() time.Time) *causeLog {
	if now == nil {
		now = time.Now
	}
	return &causeLog{
		logger: logger,
		window: causeWindow,
		max:    maxCauses,
		now:    now,
		seen:   make(map[string]*cause),
	}
}

// log logs msg with attrs unless key was logged less than a window ago. The
// line says, under "suppressed", how many times the cause occurred unlogged
// since its previous line.
func (c *causeLog) log(level slog.Level, key, msg string, attrs ...slog.Attr) {
	if !c.logger.Enabled(context.Background(), level) {
		return
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.seen[key]
	switch {
	case ok && now.Sub(e.last) < c.window:
		e.suppressed++
		c.mu.Unlock()
		return
	case !ok && len(c.seen) >= c.max:
		c.prune(now)
		if len(c.seen) >= c.max {
			first := now.Sub(c.overflowAt) >= c.window
			if first {
				c.overflowAt = now
			}
			c.mu.Unlock()
			if first {
				c.logger.LogAttrs(context.Background(), slog.LevelWarn,
					"too many distinct tls errors; logging no new causes for a while",
					slog.Int("causes", c.max), slog.Duration("window", c.window))
			}
			return
		}
	}
	suppressed := 0
	if ok {
		suppressed = e.suppressed
		e.last, e.suppressed = now, 0
	} else {
		c.seen[key] = &cause{last: now}
	}
	c.mu.Unlock()
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	c.logger.LogAttrs(context.Background(), level, msg, attrs...)
}

// prune forgets causes last logged a window ago or more. c.mu is held.
func (c *causeLog) prune(now time.Time) {
	for k, e := range c.seen {
		if now.Sub(e.last) >= c.window {
			delete(c.seen, k)
		}
	}
}

// certError is what GetCertificate returns when no certificate can be
// served. crypto/tls hands it to the server's handshake error path, where
// ServerErrorLog recognizes it as already logged.
type certError struct {
	name string
	err  error
}

const certErrorText = "no certificate for server name"

func (e *certError) Error() string {
	return certErrorText + " " + strconv.Quote(e.name) + ": " + e.err.Error()
}

func (e *certError) Unwrap() error { return e.err }

// addrPattern matches "host:port" and "[v6]:port" in error texts so that
// handshake errors differing only in the peer's address count as one cause.
var addrPattern = regexp.MustCompile(`(\[[0-9A-Fa-f:.%a-z]+\]|[0-9]+(\.[0-9]+){3}):[0-9]+`)

// serverErrorWriter turns http.Server's ErrorLog lines into slog records.
type serverErrorWriter struct {
	causes *causeLog
}

const handshakePrefix = "http: TLS handshake error from "

func (w serverErrorWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(line, handshakePrefix); ok {
		remote, reason, _ := strings.Cut(rest, ": ")
		if strings.Contains(reason, certErrorText) {
			return len(p), nil // GetCertificate logged it, with the server name
		}
		w.causes.log(slog.LevelInfo, "handshake|"+addrPattern.ReplaceAllString(reason, "<addr>"),
			"tls handshake failed", slog.String("remote", remote), slog.String("error", reason))
		return len(p), nil
	}
	w.causes.log(slog.LevelError, "server|"+addrPattern.ReplaceAllString(line, "<addr>"),
		"http server error", slog.String("error", line))
	return len(p), nil
}

// newServerErrorLog returns a *log.Logger for http.Server.ErrorLog that
// writes through causes.
func newServerErrorLog(causes *causeLog) *log.Logger {
	return log.New(serverErrorWriter{causes: causes}, "", 0)
}

// slogCore is a zapcore.Core that sends certmagic's zap records at warn
// level and above to slog, once per cause per window: certmagic logs some
// per-handshake errors (a stranger probing acme-tls/1, for one) that a
// flood would otherwise repeat endlessly.
type slogCore struct {
	causes   *causeLog
	stopping func() bool // reports whether the owner is shutting down; may be nil
	fields   []zapcore.Field
}

func newZapLogger(causes *causeLog, stopping func() bool) *zap.Logger {
	return zap.New(&slogCore{causes: causes, stopping: stopping})
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{causes: c.causes, stopping: c.stopping, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// causeFields are the certmagic fields that tell one cause from another;
// the others (remote address, attempt counters) vary per occurrence.
var causeFields = []string{"error", "identifier", "identifiers", "server_name", "subject", "names"}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	if errText, _ := enc.Fields["error"].(string); c.stopping != nil && c.stopping() &&
		strings.Contains(errText, context.Canceled.Error()) {
		return nil // work cancelled by Stop: shutdown, not an error
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+2)
	attrs = append(attrs, slog.String("component", "certmagic"))
	name := strings.TrimLeft(e.LoggerName, ".")
	if name != "" {
		attrs = append(attrs, slog.String("logger", name))
	}
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	key := "certmagic|" + name + "|" + e.Message
	for _, k := range causeFields {
		if v, ok := enc.Fields[k]; ok {
			key += "|" + k + "=" + addrPattern.ReplaceAllString(strings.TrimSpace(fmt.Sprint(v)), "<addr>")
		}
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.causes.log(level, key, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
