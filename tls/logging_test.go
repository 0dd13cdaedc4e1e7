package tls

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHandshakeFailuresLoggedOncePerCause(t *testing.T) {
	checkGoroutines(t)
	storage := t.TempDir()
	rec, logger := newRecorder(t)
	clock := &fakeClock{now: time.Now()}
	m, err := newManager(context.Background(), internalConfig(storage), logger, options{now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ts := serveTLS(t, "127.0.0.1:0", m.TLSConfig(), m)
	roots, _ := rootPool(t, storage)

	const refused = "tls handshake for unknown server name refused"
	dials := 0
	for range 20 {
		if _, err := handshake(ts.addr, "evil.example", roots); err == nil {
			t.Fatal("evil.example served")
		}
		dials++
	}
	for range 5 {
		if _, err := handshake(ts.addr, "other.example", roots); err == nil {
			t.Fatal("other.example served")
		}
		dials++
	}
	// Plain HTTP sent to the TLS port, and a client that does not trust
	// the certificate: failures only the http.Server sees.
	for range 10 {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
		io.Copy(io.Discard, conn)
		conn.Close()
		dials++
	}
	for range 10 {
		if _, err := handshake(ts.addr, "localhost", newTestCA(t, "stranger").pool()); err == nil {
			t.Fatal("client trusting another CA accepted the certificate")
		}
		dials++
	}
	waitFor(t, "the server to close every connection", func() bool { return ts.closed.Load() == int64(dials) })

	if n := len(rec.matching(refused, "server_name", "evil.example")); n != 1 {
		t.Errorf("evil.example refusal logged %d times for 20 handshakes; want 1", n)
	}
	if n := len(rec.matching(refused, "server_name", "other.example")); n != 1 {
		t.Errorf("other.example refusal logged %d times for 5 handshakes; want 1", n)
	}
	failed := rec.matching("tls handshake failed", "", "")
	var plain, badCert int
	for _, r := range failed {
		e := attr(r, "error")
		switch {
		case strings.Contains(e, "HTTP request to an HTTPS server"):
			plain++
		case strings.Contains(e, "bad certificate") || strings.Contains(e, "unknown certificate authority"):
			badCert++
		case strings.Contains(e, certErrorText):
			t.Errorf("refusal logged again by the server error log: %q", e)
		}
	}
	if plain != 1 || badCert != 1 {
		t.Errorf("plain-HTTP failures logged %d times, untrusted-certificate failures %d times; want 1 each:\n%v", plain, badCert, failed)
	}

	// A minute later the cause is logged again, with the count of what
	// was suppressed meanwhile.
	clock.Advance(61 * time.Second)
	if _, err := handshake(ts.addr, "evil.example", roots); err == nil {
		t.Fatal("evil.example served")
	}
	got := rec.matching(refused, "server_name", "evil.example")
	if len(got) != 2 {
		t.Fatalf("evil.example refusal logged %d times after a minute; want 2", len(got))
	}
	if s := attr(got[1], "suppressed"); s != "19" {
		t.Errorf("suppressed = %q; want 19", s)
	}
}

func TestCauseLogBoundsDistinctCauses(t *testing.T) {
	rec, logger := newRecorder(t)
	clock := &fakeClock{now: time.Now()}
	c := newCauseLog(logger, clock.Now)
	c.max = 3
	for i := range 10 {
		c.log(slog.LevelInfo, fmt.Sprint("k", i), "cause", slog.Int("i", i))
	}
	if n := len(rec.matching("cause", "", "")); n != 3 {
		t.Errorf("%d causes logged; want 3 (the bound)", n)
	}
	overflow := "too many distinct tls errors; logging no new causes for a while"
	if n := len(rec.matching(overflow, "", "")); n != 1 {
		t.Errorf("overflow logged %d times; want 1", n)
	}
	// After the window the old causes are forgotten and new ones get in.
	clock.Advance(time.Minute)
	c.log(slog.LevelInfo, "k9", "cause", slog.Int("i", 9))
	if n := len(rec.matching("cause", "i", "9")); n != 1 {
		t.Errorf("new cause after the window logged %d times; want 1", n)
	}
}

func TestCertmagicLogsBridgedAtWarn(t *testing.T) {
	rec, logger := newRecorder(t)
	z := newZapLogger(newCauseLog(logger, nil), nil).Named("handshake")
	z.Info("chatty")
	z.Debug("chattier")
	for range 5 {
		z.Error("tls-alpn challenge", zap.String("remote_addr", "192.0.2.1:5555"), zap.String("server_name", "x.example"), zap.Error(errors.New("no challenge")))
	}
	z.Warn("something odd", zap.Int("attempt", 2))

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.records) != 2 {
		t.Fatalf("%d records; want 2 (info and debug dropped, repeated error once): %v", len(rec.records), rec.records)
	}
	r := rec.records[0]
	if r.Level != slog.LevelError || r.Message != "tls-alpn challenge" || attr(r, "error") != "no challenge" ||
		attr(r, "logger") != "handshake" || attr(r, "component") != "certmagic" {
		t.Errorf("bridged record = %v %q error=%q logger=%q", r.Level, r.Message, attr(r, "error"), attr(r, "logger"))
	}
	if rec.records[1].Level != slog.LevelWarn {
		t.Errorf("warn bridged at %v", rec.records[1].Level)
	}
}
