package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// env is a fixed environment for tests.
var env = map[string]string{
	"BACKEND": "http://10.0.0.5:8080",
	"EMPTY":   "",
	"RPS":     "50",
}

func lookup(name string) (string, bool) {
	v, ok := env[name]
	return v, ok
}

// errorLines returns the lines of err, or nil.
func errorLines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

// errorTests are bad files and the exact errors they give. They also seed
// FuzzParse.
var errorTests = []struct {
	name string
	yaml string
	want []string
}{
	{"empty file", ``, []string{
		`sluice.yaml:1:1: routes: at least one route is needed`,
	}},
	{"comments only", "# nothing\n", []string{
		`sluice.yaml:1:1: routes: at least one route is needed`,
	}},
	{"empty upstreams", "routes:\n- upstreams: []\n", []string{
		`sluice.yaml:2:14: routes[0].upstreams: at least one upstream is needed`,
	}},
	{"empty routes", "routes: []\n", []string{
		`sluice.yaml:1:9: routes: at least one route is needed`,
	}},
	{"top level list", "- a\n- b\n", []string{
		`sluice.yaml:1:1: want a mapping, got a list`,
	}},
	{"syntax error", "routes:\n  - path: /\n    upstreams: [x\n", []string{
		`sluice.yaml:3:1: invalid YAML: did not find expected ',' or ']' (in the {...} or [...] that starts on this line; quote a value that holds { } [ ] or , such as "${NAME}")`,
	}},
	{"bare variable in a flow mapping", "routes:\n  - path: /\n    upstreams: [http://a]\n    rate_limit: {requests_per_second: ${RPS}}\n", []string{
		`sluice.yaml:4:1: invalid YAML: did not find expected ',' or '}' (in the {...} or [...] that starts on this line; quote a value that holds { } [ ] or , such as "${NAME}")`,
	}},
	{"parser error in a block", "routes:\n  - path: /\n  upstreams: [http://a]\n", []string{
		`sluice.yaml:2:1: invalid YAML: did not find expected '-' indicator`,
	}},
	{"tab indent", "routes:\n\t- path: /\n", []string{
		`sluice.yaml:2:1: invalid YAML: found character that cannot start any token`,
	}},
	{"unknown anchor", "routes:\n  - upstreams: *up\n", []string{
		`sluice.yaml:2:16: invalid YAML: alias *up names no anchor (&up) defined before it`,
	}},
	{"invalid utf8", "routes:\n  - name: \xff\n", []string{
		`sluice.yaml:2:11: invalid UTF-8 (byte 0xff); the file must be UTF-8 text`,
	}},
	{"control character", "routes:\n  - name: a\x01b\n", []string{
		`sluice.yaml:2:12: character U+0001 is not allowed in YAML`,
	}},
	{"two documents", "routes: []\n---\n---\nroutes: []\n", []string{
		`sluice.yaml:4:1: a second YAML document; the file must hold one`,
	}},
	{"unknown field with suggestion", `
routes:
  - upstream: http://x
`, []string{
		`sluice.yaml:3:5: routes[0]: unknown field "upstream" (did you mean "upstreams"?)`,
		`sluice.yaml:3:5: routes[0].upstreams: at least one upstream is needed`,
	}},
	{"unknown field by typo and by case", `
rotes: []
Listen: {}
bogus: 1
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:1: unknown field "rotes" (did you mean "routes"?)`,
		`sluice.yaml:3:1: unknown field "Listen" (did you mean "listen"?)`,
		`sluice.yaml:4:1: unknown field "bogus"`,
	}},
	{"field in the wrong section", `
https: ":443"
routes:
  - upstreams: [http://x]
    on_limit: close
    timeouts: {idle: 5s}
`, []string{
		`sluice.yaml:2:1: unknown field "https" (did you mean "listen.https"?)`,
		`sluice.yaml:5:5: routes[0]: unknown field "on_limit" (did you mean "websocket.on_limit"?)`,
		`sluice.yaml:6:16: routes[0].timeouts: "idle" is server-wide: set it under the top-level timeouts (a route can set only connect and response_header)`,
	}},
	{"duplicate keys", `
routes:
  - path: /a
    upstreams: [http://x]
    path: /b
`, []string{
		`sluice.yaml:5:5: routes[0]: duplicate field "path" (first at line 3)`,
	}},
	{"wrong types", `
listen: ":80"
tls: [acme]
timeouts: {idle: [1s]}
routes:
  - hosts: a.example.com
    upstreams: http://x
    websocket: true
  - just a string
`, []string{
		`sluice.yaml:2:9: listen: want a mapping, got ":80"`,
		`sluice.yaml:3:6: tls: want a mapping, got a list`,
		`sluice.yaml:4:18: timeouts.idle: want a single value, got a list`,
		`sluice.yaml:6:12: routes[0].hosts: want a list, got "a.example.com" (write [a.example.com] for a list of one)`,
		`sluice.yaml:7:16: routes[0].upstreams: want a list, got "http://x" (write [http://x] for a list of one)`,
		`sluice.yaml:8:16: routes[0].websocket: want a mapping, got "true"`,
		`sluice.yaml:9:5: routes[1]: want a mapping, got "just a string"`,
	}},
	{"bad upstreams", `
routes:
  - upstreams:
      - htp://x
      - localhost:9000
      - http://a/?q=1
      - http://u:p@a/
      - http://a/#f
      - http://
      - http://a:http/
      -
`, []string{
		`sluice.yaml:4:9: routes[0].upstreams[0]: "htp://x": scheme must be http or https`,
		`sluice.yaml:5:9: routes[0].upstreams[1]: "localhost:9000": missing scheme (write "http://localhost:9000")`,
		`sluice.yaml:6:9: routes[0].upstreams[2]: "http://a/?q=1": a query is not allowed`,
		`sluice.yaml:7:9: routes[0].upstreams[3]: "http://u:p@a/": user info is not allowed (set an Authorization header under headers.request.set)`,
		`sluice.yaml:8:9: routes[0].upstreams[4]: "http://a/#f": a fragment is not allowed`,
		`sluice.yaml:9:9: routes[0].upstreams[5]: "http://": missing host`,
		`sluice.yaml:10:9: routes[0].upstreams[6]: "http://a:http/": not a URL: invalid port ":http" after host`,
		`sluice.yaml:11:8: routes[0].upstreams[7]: want a value, got nothing`,
	}},
	{"bad hosts", `
routes:
  - upstreams: [http://x]
    hosts:
      - example.com:8080
      - a.*.example.com
      - "*"
      - "*example.com"
      - bücher.de
      - https://example.com
      - -bad-.example.com
      - Example.COM
      - example.com.
`, []string{
		`sluice.yaml:5:9: routes[0].hosts[0]: "example.com:8080": hosts are matched without a port; write "example.com" (the port comes from the listener)`,
		`sluice.yaml:6:9: routes[0].hosts[1]: "a.*.example.com": a wildcard must be the whole first label, as in *.example.com`,
		`sluice.yaml:7:9: routes[0].hosts[2]: "*": leave hosts out to match any host`,
		`sluice.yaml:8:9: routes[0].hosts[3]: "*example.com": a wildcard must be the whole first label, as in *.example.com`,
		`sluice.yaml:9:9: routes[0].hosts[4]: "bücher.de": write an internationalised name in its ASCII (xn--) form`,
		`sluice.yaml:10:9: routes[0].hosts[5]: "https://example.com": a host is a bare name such as api.example.com, without scheme or path`,
		`sluice.yaml:11:9: routes[0].hosts[6]: "-bad-.example.com": not a valid host name`,
		`sluice.yaml:13:9: routes[0].hosts[8]: "example.com" is listed twice (also hosts[7])`,
	}},
	{"bad paths", `
routes:
  - {path: api, upstreams: [http://x]}
  - {path: "/a?b", upstreams: [http://x]}
  - {path: /a//b, upstreams: [http://x]}
  - {path: /a/../b, upstreams: [http://x]}
  - {path: "/a b", upstreams: [http://x]}
`, []string{
		`sluice.yaml:3:12: routes[0].path: "api": must start with /`,
		`sluice.yaml:4:12: routes[1].path: "/a?b": a path prefix cannot hold a query (?) or fragment (#)`,
		`sluice.yaml:5:12: routes[2].path: "/a//b": empty, . and .. segments are not allowed`,
		`sluice.yaml:6:12: routes[3].path: "/a/../b": empty, . and .. segments are not allowed`,
		`sluice.yaml:7:12: routes[4].path: "/a b": spaces and control characters are not allowed (percent-encode them)`,
	}},
	{"conflicting routes", `
routes:
  - name: a
    hosts: [x.example.com, y.example.com]
    path: /api
    upstreams: [http://x]
  - name: b
    hosts: [y.example.com]
    path: /api/
    upstreams: [http://x]
  - path: /
    upstreams: [http://x]
  - upstreams: [http://x]
  - name: a
    path: /other
    upstreams: [http://x]
`, []string{
		`sluice.yaml:9:11: routes[1].path: "/api" on host "y.example.com" is already routed by the route at line 3`,
		`sluice.yaml:13:5: routes[3].path: "/" for any host is already routed by the route at line 11`,
		`sluice.yaml:14:11: routes[4].name: "a" is already the name of the route at line 3`,
	}},
	{"bad enums and numbers", `
log: {level: verbose, access: ""}
routes:
  - upstreams: [http://x]
    host_header: origin
    strip_prefix: yes
    max_body: 10 MiBs
    rate_limit: {requests_per_second: -1, burst: 1.5}
    websocket:
      on_limit: drop
      max_connections: -3
      messages_per_second: fast
      message_burst: 99999999999999999999
      bytes_per_second: 1.5MiB
      max_message_size: 99999999999GiB
      idle_timeout: -1s
      ping_interval: 30
`, []string{
		`sluice.yaml:2:14: log.level: "verbose": want debug, info, warn or error`,
		`sluice.yaml:2:31: log.access: empty: want stdout, stderr, off or a file path`,
		`sluice.yaml:5:18: routes[0].host_header: "origin": want preserve or upstream`,
		`sluice.yaml:6:19: routes[0].strip_prefix: "yes": want true or false`,
		`sluice.yaml:7:15: routes[0].max_body: "10 MiBs": unknown unit "MiBs" (use KiB, MiB, GiB, KB, MB, GB, or k, m, g)`,
		`sluice.yaml:8:39: routes[0].rate_limit.requests_per_second: "-1": must not be negative`,
		`sluice.yaml:8:50: routes[0].rate_limit.burst: "1.5": want a whole number`,
		`sluice.yaml:10:17: routes[0].websocket.on_limit: "drop": want throttle or close`,
		`sluice.yaml:11:24: routes[0].websocket.max_connections: "-3": must not be negative`,
		`sluice.yaml:12:28: routes[0].websocket.messages_per_second: "fast": want a number`,
		`sluice.yaml:13:22: routes[0].websocket.message_burst: "99999999999999999999": too large`,
		`sluice.yaml:14:25: routes[0].websocket.bytes_per_second: "1.5MiB": a size is a whole number (write e.g. 1536KiB for 1.5MiB)`,
		`sluice.yaml:15:25: routes[0].websocket.max_message_size: "99999999999GiB": too large`,
		`sluice.yaml:16:21: routes[0].websocket.idle_timeout: "-1s": must not be negative`,
		`sluice.yaml:17:22: routes[0].websocket.ping_interval: "30": a duration needs a unit (write e.g. 30s)`,
	}},
	{"zero bursts with a rate", `
routes:
  - upstreams: [http://x]
    rate_limit: {requests_per_second: 5, burst: 0}
    websocket: {messages_per_second: 1, message_burst: 0}
`, []string{
		`sluice.yaml:4:49: routes[0].rate_limit.burst: must be at least 1 when requests_per_second is set`,
		`sluice.yaml:5:56: routes[0].websocket.message_burst: must be at least 1 when messages_per_second is set`,
	}},
	{"headers", `
routes:
  - upstreams: [http://x]
    headers:
      request:
        set:
          Connection: close
          x-real-ip: a
          X-Real-IP: b
          "bad header": c
          Host: h
          X-Empty:
          X-Token: "a\nb"
        remove: [x-debug, "no good"]
      response: {delete: [Server]}
`, []string{
		`sluice.yaml:7:11: routes[0].headers.request.set: Connection cannot be set: hop-by-hop headers are not forwarded`,
		`sluice.yaml:9:11: routes[0].headers.request.set: "X-Real-IP" is the same header as "x-real-ip" at line 8`,
		`sluice.yaml:10:11: routes[0].headers.request.set: "bad header": not a valid header name`,
		`sluice.yaml:11:11: routes[0].headers.request.set: Host cannot be set: use host_header to choose the upstream Host`,
		`sluice.yaml:12:19: routes[0].headers.request.set.X-Empty: want a value, got nothing`,
		`sluice.yaml:13:20: routes[0].headers.request.set.X-Token: the value holds a control character (line breaks are not allowed)`,
		`sluice.yaml:14:27: routes[0].headers.request.remove[1]: "no good": not a valid header name`,
		`sluice.yaml:15:18: routes[0].headers.response: unknown field "delete"`,
	}},
	{"origins", `
routes:
  - upstreams: [http://x]
    websocket:
      origins: ["*", app.example.com, "https://app.example.com/path", "https://*.example.com"]
`, []string{
		`sluice.yaml:5:17: routes[0].websocket.origins[0]: "*": leave origins empty to allow any origin`,
		`sluice.yaml:5:22: routes[0].websocket.origins[1]: "app.example.com": want an origin such as https://app.example.com or http://localhost:3000`,
		`sluice.yaml:5:39: routes[0].websocket.origins[2]: "https://app.example.com/path": want an origin such as https://app.example.com or http://localhost:3000`,
		`sluice.yaml:5:71: routes[0].websocket.origins[3]: "https://*.example.com": want an origin such as https://app.example.com or http://localhost:3000`,
	}},
	{"listeners", `
listen: {http: "80", https: "localhost:https"}
admin: {listen: "127.0.0.1:"}
routes: [{hosts: [a.example.com], upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:16: listen.http: "80": want host:port (write ":80" for all interfaces)`,
		`sluice.yaml:2:29: listen.https: "localhost:https": port "https" is not a number from 0 to 65535`,
		`sluice.yaml:3:17: admin.listen: "127.0.0.1:": port "" is not a number from 0 to 65535`,
	}},
	{"same addresses", `
listen: {http: ":8080", https: ":8080"}
admin: {listen: ":8080"}
tls: {mode: internal}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:32: listen.https: ":8080" is also listen.http`,
		`sluice.yaml:3:17: admin.listen: ":8080" is also a public listener; give the admin listener its own address`,
	}},
	{"nothing to serve", `
listen: {http: "off"}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:16: listen.http: http is off and https is not set: nothing would be served`,
	}},
	{"tls off with https", `
listen: {https: ":443"}
tls: {mode: "off"}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:3:13: tls.mode: "off" but listen.https is set: choose acme, internal or files, or remove listen.https`,
	}},
	{"tls without https", `
tls: {mode: internal}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:13: tls.mode: "internal" needs listen.https (e.g. ":443")`,
	}},
	{"acme by default without hosts", `
listen: {https: ":443"}
routes: [{hosts: ["*.example.com"], upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:17: tls.mode: acme (the default when listen.https is set) needs at least one route host that is not a wildcard; set tls.mode: internal for local certificates`,
	}},
	{"acme settings", `
listen: {https: ":443"}
tls: {mode: acme, email: ops, ca: "http://acme.example/dir", ca_root: missing.pem}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:3:13: tls.mode: acme needs at least one route host that is not a wildcard, to get certificates for`,
		`sluice.yaml:3:26: tls.email: "ops": not an email address`,
		`sluice.yaml:3:35: tls.ca: "http://acme.example/dir": want an https URL of an ACME directory`,
		`sluice.yaml:3:71: tls.ca_root: "testdata/missing.pem": no such file`,
	}},
	{"files mode", `
listen: {https: ":443"}
tls:
  mode: files
  certificates:
    - {cert: nope.crt}
    - {cert: cert.pem, key: /nonexistent/key.pem}
    - {cert: ".", key: ""}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:6:7: tls.certificates[0]: key is missing`,
		`sluice.yaml:6:14: tls.certificates[0].cert: "testdata/nope.crt": no such file`,
		`sluice.yaml:7:29: tls.certificates[1].key: "/nonexistent/key.pem": no such file`,
		`sluice.yaml:8:14: tls.certificates[2].cert: "testdata" is a directory, not a file`,
		`sluice.yaml:8:24: tls.certificates[2].key: empty: want a file path`,
	}},
	{"files mode, pairs that do not load", `
listen: {https: ":443"}
tls:
  mode: files
  certificates:
    - {cert: pair.crt, key: pair.key}
    - {cert: pair.crt, key: other.key}
    - {cert: notpem.crt, key: pair.key}
    - {cert: pair.crt, key: notpem.crt}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:7:14: tls.certificates[1].cert: "testdata/pair.crt" and "testdata/other.key" are not a certificate and its key: private key type does not match public key type`,
		`sluice.yaml:8:14: tls.certificates[2].cert: "testdata/notpem.crt": failed to find any PEM data in certificate input`,
		`sluice.yaml:9:29: tls.certificates[3].key: "testdata/notpem.crt": failed to find any PEM data in key input`,
	}},
	{"files mode without certificates", `
listen: {https: ":443"}
tls: {mode: files}
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:3:13: tls.certificates: files mode needs at least one {cert, key} pair`,
	}},
	{"trusted proxies", `
trusted_proxies: [10.0.0.0/33, "fe80::1%eth0", proxy.example.com]
routes: [{upstreams: [http://x]}]
`, []string{
		`sluice.yaml:2:19: trusted_proxies[0]: "10.0.0.0/33": not a CIDR such as 10.0.0.0/8 or fd00::/8`,
		`sluice.yaml:2:32: trusted_proxies[1]: "fe80::1%eth0": not an IP address or CIDR`,
		`sluice.yaml:2:48: trusted_proxies[2]: "proxy.example.com": not an IP address or CIDR`,
	}},
	{"environment", `
routes:
  - upstreams: ["${NOPE}", "${BACKEND", "${1X}"]
    name: $${literal} ${BACKEND}
`, []string{
		`sluice.yaml:3:17: routes[0].upstreams[0]: environment variable NOPE is not set`,
		`sluice.yaml:3:28: routes[0].upstreams[1]: "${BACKEND" has no closing brace (write $${ for a literal ${)`,
		`sluice.yaml:3:41: routes[0].upstreams[2]: "1X": not a valid environment variable name (letters, digits and _, not starting with a digit)`,
	}},
	{"merge keys", `
x-ws: &ws {on_limit: close, bogus: 1}
routes:
  - upstreams: [http://x]
    websocket: {<<: *ws, on_limit: throttle}
  - upstreams: [http://x]
    path: /b
    websocket:
      <<: [*ws, 3]
`, []string{
		`sluice.yaml:2:1: unknown field "x-ws"`,
		`sluice.yaml:2:29: routes[0].websocket: unknown field "bogus"`,
		`sluice.yaml:2:29: routes[1].websocket: unknown field "bogus"`,
		`sluice.yaml:9:17: routes[1].websocket: merge key (<<) wants a mapping or a list of mappings`,
	}},
	{"cyclic alias", `
routes: &r
  - *r
`, []string{
		`sluice.yaml:2:9: routes: at least one route is needed`,
		`sluice.yaml:3:5: routes[0]: want a mapping, got a list`,
	}},
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range errorTests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parse("testdata/sluice.yaml", []byte(tt.yaml), lookup)
			if c != nil {
				t.Errorf("got a config, want none")
			}
			got := errorLines(err)
			for i := range got {
				got[i] = strings.TrimPrefix(got[i], "testdata/")
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			for _, e := range joined(err) {
				var ce *Error
				if !errors.As(e, &ce) {
					t.Errorf("%v is a %T, want *Error", e, e)
				}
			}
		})
	}
}

// joined returns the errors joined in err.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return nil
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := parse("", []byte("routes: [{upstreams: [http://127.0.0.1:8080]}]\n---\n"), lookup)
	if err != nil {
		t.Fatal(err)
	}
	timeouts := Timeouts{
		ReadHeader:     10 * time.Second,
		Idle:           2 * time.Minute,
		Connect:        5 * time.Second,
		ResponseHeader: 60 * time.Second,
		Shutdown:       30 * time.Second,
	}
	want := &Config{
		Listen: Listen{HTTP: ":80"},
		TLS: TLS{
			Mode:    TLSOff,
			CA:      "https://acme-v02.api.letsencrypt.org/directory",
			Storage: "sluice-data",
		},
		Admin:    Admin{Listen: "127.0.0.1:9901"},
		Log:      Log{Access: "stdout", Level: slog.LevelInfo},
		Timeouts: timeouts,
		Routes: []Route{{
			Name:       "/",
			Path:       "/",
			Upstreams:  []*url.URL{mustURL(t, "http://127.0.0.1:8080")},
			HostHeader: HostPreserve,
			MaxBody:    10 << 20,
			RateLimit:  RateLimit{Burst: 1},
			WebSocket:  WebSocket{Enabled: true, OnLimit: OnLimitThrottle, MessageBurst: 1},
			Timeouts:   timeouts,
		}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

// TestExplicitValues checks values that differ from the defaults, zeros
// that must not be replaced by defaults, and normalisation.
func TestExplicitValues(t *testing.T) {
	t.Parallel()
	c, err := parse("/etc/sluice/sluice.yaml", []byte(`
listen: {http: off, https: "127.0.0.1:8443"}
tls: {mode: internal, storage: data}
admin: {listen: "off"}
log: {access: logs/access.log, level: debug}
trusted_proxies: [10.1.2.3/8, 192.0.2.7, "2001:db8::1"]
timeouts: {read_header: 0, idle: 0s, connect: 1s, response_header: 0, shutdown: 1m}
routes:
  - hosts: [API.Example.COM, "*.api.example.com", "[::1]", example.org.]
    path: /api/
    strip_prefix: true
    upstreams: ["${BACKEND}/base", "https://[::1]:9443"]
    host_header: upstream
    max_body: 0
    flush_interval: 100ms
    headers:
      request: {set: {x-api-key: "${EMPTY}", x-literal: "$${HOME}"}, remove: [x-debug, X-DEBUG, cookie]}
      response: {remove: [server]}
    rate_limit: {requests_per_second: "${RPS}"}
    websocket:
      enabled: false
      origins: [HTTPS://App.Example.com/, "http://localhost:3000"]
      max_connections: 3
      max_connections_per_ip: 1
      messages_per_second: 2.5
      bytes_per_second: 8k
      max_message_size: 1MB
      on_limit: close
      idle_timeout: 1m
      ping_interval: 20s
    timeouts: {response_header: 0}
  - name: other
    path: /
    upstreams: [http://x]
    rate_limit: {burst: 0}
`), lookup)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", name, got, want)
		}
	}
	check("Listen", c.Listen, Listen{HTTP: "", HTTPS: "127.0.0.1:8443"})
	check("TLS.Mode", c.TLS.Mode, TLSInternal)
	check("TLS.Storage", c.TLS.Storage, "/etc/sluice/data")
	check("Admin.Listen", c.Admin.Listen, "")
	check("Log", c.Log, Log{Access: "/etc/sluice/logs/access.log", Level: slog.LevelDebug})
	check("TrustedProxies", c.TrustedProxies, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
	})
	check("Timeouts", c.Timeouts, Timeouts{Connect: time.Second, Shutdown: time.Minute})

	r := c.Routes[0]
	check("Name", r.Name, "api.example.com/api")
	check("Hosts", r.Hosts, []string{"api.example.com", "*.api.example.com", "::1", "example.org"})
	check("Path", r.Path, "/api")
	check("StripPrefix", r.StripPrefix, true)
	check("Upstreams", r.Upstreams, []*url.URL{mustURL(t, "http://10.0.0.5:8080/base"), mustURL(t, "https://[::1]:9443")})
	check("HostHeader", r.HostHeader, HostUpstream)
	check("MaxBody", r.MaxBody, int64(0))
	check("FlushInterval", r.FlushInterval, 100*time.Millisecond)
	check("Headers", r.Headers, Headers{
		Request: HeaderOps{
			Set:    map[string]string{"X-Api-Key": "", "X-Literal": "${HOME}"},
			Remove: []string{"X-Debug", "Cookie"},
		},
		Response: HeaderOps{Remove: []string{"Server"}},
	})
	check("RateLimit", r.RateLimit, RateLimit{RequestsPerSecond: 50, Burst: 50})
	check("WebSocket", r.WebSocket, WebSocket{
		Enabled:             false,
		Origins:             []string{"https://app.example.com", "http://localhost:3000"},
		MaxConnections:      3,
		MaxConnectionsPerIP: 1,
		MessagesPerSecond:   2.5,
		MessageBurst:        3,
		BytesPerSecond:      8 << 10,
		MaxMessageSize:      1e6,
		OnLimit:             OnLimitClose,
		IdleTimeout:         time.Minute,
		PingInterval:        20 * time.Second,
	})
	check("route Timeouts", r.Timeouts, Timeouts{Connect: time.Second, Shutdown: time.Minute})

	// A zero burst with no rate is allowed: there is no limit to burst.
	check("other RateLimit", c.Routes[1].RateLimit, RateLimit{})
}

func TestRouteTimeoutOverride(t *testing.T) {
	t.Parallel()
	c, err := parse("", []byte(`
timeouts: {connect: 3s, idle: 1m}
routes:
  - upstreams: [http://x]
    timeouts: {connect: 1s}
`), lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := Timeouts{ReadHeader: 10 * time.Second, Idle: time.Minute, Connect: time.Second, ResponseHeader: time.Minute, Shutdown: 30 * time.Second}
	if got := c.Routes[0].Timeouts; got != want {
		t.Errorf("route timeouts = %+v, want %+v", got, want)
	}
	if got := c.Timeouts.Connect; got != 3*time.Second {
		t.Errorf("server connect = %v, want 3s", got)
	}
}

func TestTLSDefaults(t *testing.T) {
	t.Parallel()
	c, err := parse("conf/sluice.yaml", []byte(`
listen: {https: ":443"}
routes: [{hosts: [www.example.com], upstreams: [http://x]}]
`), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Mode != TLSACME {
		t.Errorf("mode = %q, want acme when listen.https is set", c.TLS.Mode)
	}
	if c.TLS.Storage != filepath.Join("conf", "sluice-data") {
		t.Errorf("storage = %q, want it next to the config file", c.TLS.Storage)
	}
	if c.Listen.HTTP != ":80" {
		t.Errorf("listen.http = %q, want :80", c.Listen.HTTP)
	}
}

func TestFilesMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, from := range map[string]string{"site.crt": "pair.crt", "site.key": "pair.key"} {
		pem, err := os.ReadFile(filepath.Join("testdata", from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "sluice.yaml")
	data := []byte(`
listen: {https: ":443"}
tls:
  mode: files
  certificates: [{cert: site.crt, key: site.key}]
routes: [{upstreams: [http://x]}]
`)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	want := []CertFile{{Cert: filepath.Join(dir, "site.crt"), Key: filepath.Join(dir, "site.key")}}
	if !reflect.DeepEqual(c.TLS.Certificates, want) {
		t.Errorf("certificates = %v, want %v", c.TLS.Certificates, want)
	}
	if c.File != file {
		t.Errorf("File = %q, want %q", c.File, file)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want os.ErrNotExist", err)
	}
}

func TestMergeKeys(t *testing.T) {
	t.Parallel()
	_, err := parse("", []byte(`
x: &limits {messages_per_second: 5, on_limit: close}
routes:
  - upstreams: [http://x]
    websocket: {<<: *limits, on_limit: throttle}
`), lookup)
	// x is not a known key, so the file is refused; the merged values
	// must still have been read (no error about them).
	if got := errorLines(err); len(got) != 1 || !strings.HasSuffix(got[0], `unknown field "x"`) {
		t.Fatalf("errors = %q, want only the unknown field x", got)
	}
	c, err := parse("", []byte(`
routes:
  - &api
    path: /a
    upstreams: [http://x]
    websocket: {messages_per_second: 5, on_limit: close}
  - <<: *api
    path: /b
    websocket: {on_limit: throttle}
`), lookup)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Routes[1]
	if b.Path != "/b" || len(b.Upstreams) != 1 || b.WebSocket.OnLimit != OnLimitThrottle || b.WebSocket.MessagesPerSecond != 0 {
		t.Errorf("merged route = %+v", b)
	}
}

func TestEnvironment(t *testing.T) {
	// Not parallel: it sets the process environment, which Parse reads.
	t.Setenv("SLUICE_TEST_UPSTREAM", "http://127.0.0.1:7000")
	t.Setenv("SLUICE_TEST_MAX", "2MiB")
	c, err := Parse("", []byte(`
routes:
  - upstreams: ["${SLUICE_TEST_UPSTREAM}"]
    max_body: ${SLUICE_TEST_MAX}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Routes[0].Upstreams[0].String(); got != "http://127.0.0.1:7000" {
		t.Errorf("upstream = %q", got)
	}
	if got := c.Routes[0].MaxBody; got != 2<<20 {
		t.Errorf("max_body = %d, want %d", got, 2<<20)
	}
}

func TestExpandEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want, err string
	}{
		{in: "plain", want: "plain"},
		{in: "${BACKEND}", want: "http://10.0.0.5:8080"},
		{in: "a${RPS}b${RPS}c", want: "a50b50c"},
		{in: "x${EMPTY}y", want: "xy"},
		{in: "$${BACKEND}", want: "${BACKEND}"},
		{in: "$$${RPS}", want: "$${RPS}"},
		{in: "$RPS $ $$ {RPS}", want: "$RPS $ $$ {RPS}"},
		{in: "${NOPE}", err: "environment variable NOPE is not set"},
		{in: "${}", err: `"": not a valid environment variable name (letters, digits and _, not starting with a digit)`},
		{in: "${A-B}", err: `"A-B": not a valid environment variable name (letters, digits and _, not starting with a digit)`},
		{in: "x${RPS", err: `"${RPS" has no closing brace (write $${ for a literal ${)`},
	}
	for _, tt := range tests {
		got, err := expandEnv(tt.in, lookup)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("expandEnv(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("expandEnv(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestExampleValidates(t *testing.T) {
	t.Parallel()
	c, err := Load("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Mode != TLSACME || c.Listen.HTTPS != ":443" {
		t.Errorf("tls = %+v, listen = %+v", c.TLS, c.Listen)
	}
	if len(c.Routes) != 3 {
		t.Fatalf("%d routes, want 3", len(c.Routes))
	}
	api, chat, site := c.Routes[0], c.Routes[1], c.Routes[2]
	if api.Name != "api" || api.Path != "/api" || len(api.Upstreams) != 2 || api.RateLimit.Burst != 200 {
		t.Errorf("api route = %+v", api)
	}
	if chat.WebSocket.MessagesPerSecond != 10 || chat.WebSocket.BytesPerSecond != 64<<10 || chat.WebSocket.MaxMessageSize != 1<<20 {
		t.Errorf("chat websocket = %+v", chat.WebSocket)
	}
	if site.Path != "/" || len(site.Hosts) != 0 || site.MaxBody != 1<<20 {
		t.Errorf("site route = %+v", site)
	}
}

func TestErrorFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "sluice.yaml", Line: 14, Col: 7, Field: "routes[1].upstreams[0]", Msg: `"htp://x": scheme must be http or https`},
			`sluice.yaml:14:7: routes[1].upstreams[0]: "htp://x": scheme must be http or https`},
		{Error{File: "a.yaml", Line: 1, Col: 1, Msg: "invalid YAML: x"}, `a.yaml:1:1: invalid YAML: x`},
		{Error{Line: 2, Col: 3, Field: "log", Msg: "m"}, `2:3: log: m`},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// TestAliasExpansionIsBounded: merge keys and aliases can name a mapping
// exponentially often in a small file; the walk must give up, not hang.
func TestAliasExpansionIsBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("routes:\n  - &m0 {path: /a, upstreams: [http://x]}\n")
	for i := 1; i < 8; i++ {
		fmt.Fprintf(&b, "  - &m%d {<<: [%s*m%d]}\n", i, strings.Repeat(fmt.Sprintf("*m%d, ", i-1), 11), i-1)
	}
	_, err := parse("", []byte(b.String()), lookup)
	if err == nil || !strings.Contains(err.Error(), "the document is too large once its aliases are expanded") {
		t.Fatalf("error = %v, want the document too large", err)
	}
}
