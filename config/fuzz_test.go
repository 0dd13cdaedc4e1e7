package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that it returns either a
// config or errors, that every error is a positioned *Error, and that a
// config it accepts keeps the invariants runtime code relies on.
func FuzzParse(f *testing.F) {
	for _, tt := range errorTests {
		f.Add([]byte(tt.yaml))
	}
	example, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("routes: [{upstreams: [http://x]}]\n"))
	f.Add([]byte("routes:\n  - &r {upstreams: [\"${BACKEND}\"]}\n  - {<<: *r, path: /b}\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse("fuzz.yaml", data, lookup)
		if (c == nil) == (err == nil) {
			t.Fatalf("got config %v and error %v: want exactly one", c != nil, err)
		}
		if err != nil {
			errs := joined(err)
			if len(errs) == 0 {
				t.Fatalf("error %q joins no errors", err)
			}
			for _, e := range errs {
				var ce *Error
				if !errors.As(e, &ce) || ce.Line < 1 || ce.Col < 1 || ce.File != "fuzz.yaml" || ce.Msg == "" {
					t.Fatalf("badly formed error %#v", e)
				}
				if strings.Contains(ce.Msg, "\n") {
					t.Fatalf("error message spans lines: %q", ce.Msg)
				}
			}
			return
		}
		checkInvariants(t, c)
	})
}

// checkInvariants checks what a valid Config promises.
func checkInvariants(t *testing.T, c *Config) {
	t.Helper()
	if len(c.Routes) == 0 {
		t.Fatal("no routes")
	}
	if c.Listen.HTTPS == "" && c.TLS.Mode != TLSOff || c.Listen.HTTPS != "" && c.TLS.Mode == TLSOff {
		t.Fatalf("tls mode %q with listen.https %q", c.TLS.Mode, c.Listen.HTTPS)
	}
	for _, r := range c.Routes {
		if r.Name == "" || !strings.HasPrefix(r.Path, "/") || (r.Path != "/" && strings.HasSuffix(r.Path, "/")) {
			t.Fatalf("route name %q path %q", r.Name, r.Path)
		}
		if len(r.Upstreams) == 0 {
			t.Fatalf("route %q has no upstreams", r.Name)
		}
		for _, u := range r.Upstreams {
			if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("route %q upstream %v", r.Name, u)
			}
		}
		for _, h := range r.Hosts {
			if h == "" || h != strings.ToLower(h) || strings.Contains(h, ":") && !strings.Contains(h, "::") && strings.Count(h, ":") < 2 {
				t.Fatalf("route %q host %q", r.Name, h)
			}
		}
		if r.MaxBody < 0 || r.FlushInterval < 0 || r.WebSocket.BytesPerSecond < 0 || r.WebSocket.MaxMessageSize < 0 {
			t.Fatalf("route %q has a negative value", r.Name)
		}
		if r.RateLimit.RequestsPerSecond > 0 && r.RateLimit.Burst < 1 {
			t.Fatalf("route %q burst %d", r.Name, r.RateLimit.Burst)
		}
		if r.WebSocket.MessagesPerSecond > 0 && r.WebSocket.MessageBurst < 1 {
			t.Fatalf("route %q message burst %d", r.Name, r.WebSocket.MessageBurst)
		}
		if r.HostHeader != HostPreserve && r.HostHeader != HostUpstream {
			t.Fatalf("route %q host_header %q", r.Name, r.HostHeader)
		}
		if r.WebSocket.OnLimit != OnLimitThrottle && r.WebSocket.OnLimit != OnLimitClose {
			t.Fatalf("route %q on_limit %q", r.Name, r.WebSocket.OnLimit)
		}
	}
	for _, p := range c.TrustedProxies {
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("trusted proxy %v", p)
		}
	}
}
