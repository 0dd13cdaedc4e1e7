package proxy

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/config"
)

func routesFor(specs ...string) []*Route {
	// spec: "name host1,host2 /path" with "-" for no hosts.
	var rs []*Route
	for _, s := range specs {
		f := strings.Fields(s)
		rc := &config.Route{Name: f[0], Path: f[2]}
		if f[1] != "-" {
			rc.Hosts = strings.Split(f[1], ",")
		}
		rs = append(rs, &Route{cfg: rc})
	}
	return rs
}

func TestRouterLookup(t *testing.T) {
	rt := NewRouter(routesFor(
		"root - /",
		"api - /api",
		"apiv2 - /api/v2",
		"host-root example.com /",
		"host-api example.com /api",
		"wild *.example.com /",
		"wild-deep *.b.example.com /x",
		"only-path other.com /only",
	))
	tests := []struct {
		host, path string
		want       string
		hostMatch  bool
	}{
		{"any.org", "/", "root", false},
		{"any.org", "/api", "api", false},
		{"any.org", "/api/", "api", false},
		{"any.org", "/api/users", "api", false},
		{"any.org", "/apix", "root", false},
		{"any.org", "/api/v2", "apiv2", false},
		{"any.org", "/api/v2/x", "apiv2", false},
		{"any.org", "/api/v20", "api", false},
		{"example.com", "/", "host-root", true},
		{"EXAMPLE.com:8443", "/api/x", "host-api", true},
		{"example.com.", "/api", "host-api", true},
		{"a.example.com", "/api", "wild", true},
		{"a.b.example.com", "/x/y", "wild-deep", true},
		{"a.b.example.com", "/y", "wild", true}, // deeper wildcard has no match: fall back to the shorter suffix
		{"example.org", "/api", "api", false},
		{"other.com", "/only/1", "only-path", true},
		{"other.com", "/else", "root", false}, // a host group without a match falls back to any-host routes
		{"[::1]:8443", "/", "root", false},
		{"::1", "/", "root", false},
	}
	for _, tt := range tests {
		r, hm := rt.Lookup(tt.host, tt.path)
		if r == nil || r.cfg.Name != tt.want || hm != tt.hostMatch {
			got := "<nil>"
			if r != nil {
				got = r.cfg.Name
			}
			t.Errorf("Lookup(%q, %q) = %s, %v; want %s, %v", tt.host, tt.path, got, hm, tt.want, tt.hostMatch)
		}
	}
}

func TestRouterNoMatch(t *testing.T) {
	rt := NewRouter(routesFor("api example.com /api"))
	if r, _ := rt.Lookup("example.com", "/other"); r != nil {
		t.Fatalf("got route %s, want none", r.cfg.Name)
	}
	if r, _ := rt.Lookup("else.com", "/api"); r != nil {
		t.Fatalf("got route %s, want none", r.cfg.Name)
	}
}

func TestCleanPath(t *testing.T) {
	tests := map[string]string{
		"":                 "/",
		"/":                "/",
		"/a/b":             "/a/b",
		"/a/b/":            "/a/b/",
		"//a///b":          "/a/b",
		"/public/../admin": "/admin",
		"/a/./b":           "/a/b",
		"/../../x":         "/x",
		"/a/b/..":          "/a/",
		"/a/.":             "/a/",
		"/..":              "/",
		"/a..b/.c":         "/a..b/.c",
		"/.well-known/x":   "/.well-known/x",
	}
	for in, want := range tests {
		if got := cleanPath(in); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// naiveLookup is the routing rule written as plainly as possible, to check
// the Router against.
func naiveLookup(routes []*Route, host, path string) (*Route, bool) {
	host = normalizeHost(host)
	best := func(match func(h string) bool) *Route {
		var r *Route
		for _, c := range routes {
			ok := false
			for _, h := range c.cfg.Hosts {
				if match(h) {
					ok = true
				}
			}
			if ok && pathHasPrefix(path, c.cfg.Path) && (r == nil || len(c.cfg.Path) > len(r.cfg.Path)) {
				r = c
			}
		}
		return r
	}
	if r := best(func(h string) bool { return h == host }); r != nil {
		return r, true
	}
	// Wildcards: the longest suffix with a path match wins.
	for rest := host; strings.Contains(rest, "."); {
		rest = rest[strings.IndexByte(rest, '.')+1:]
		if r := best(func(h string) bool { return h == "*."+rest }); r != nil {
			return r, true
		}
	}
	var r *Route
	for _, c := range routes {
		if len(c.cfg.Hosts) == 0 && pathHasPrefix(path, c.cfg.Path) && (r == nil || len(c.cfg.Path) > len(r.cfg.Path)) {
			r = c
		}
	}
	return r, false
}

func FuzzRouter(f *testing.F) {
	routes := routesFor(
		"root - /",
		"api - /api",
		"apiv2 - /api/v2",
		"host-api example.com /api",
		"wild *.example.com /",
		"wild-deep *.b.example.com /x",
	)
	rt := NewRouter(routes)
	for _, s := range [][2]string{{"example.com", "/api/x"}, {"a.b.example.com", "/x"}, {"X.Example.COM:80", "/apix"}, {"[::1]", "/"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, host, path string) {
		path = cleanPath(path)
		got, gotHM := rt.Lookup(host, path)
		want, wantHM := naiveLookup(routes, host, path)
		if got != want || gotHM != wantHM {
			t.Fatalf("Lookup(%q, %q) = %v,%v; naive = %v,%v", host, path, name(got), gotHM, name(want), wantHM)
		}
	})
}

func name(r *Route) string {
	if r == nil {
		return "<nil>"
	}
	return r.cfg.Name
}

func BenchmarkRouterLookup(b *testing.B) {
	// A table the size of a busy nginx config: 50 hosts with 4 paths each,
	// wildcards and catch-alls.
	var specs []string
	for i := range 50 {
		for _, p := range []string{"/", "/api", "/api/v1", "/static"} {
			specs = append(specs, fmt.Sprintf("r%d%s host%d.example.com %s", i, p, i, p))
		}
	}
	specs = append(specs, "wild *.example.org /", "root - /", "any-api - /api")
	rt := NewRouter(routesFor(specs...))
	cases := []struct{ name, host, path string }{
		{"exact", "host25.example.com", "/api/v1/users/42"},
		{"exact-port", "host25.example.com:443", "/static/app.js"},
		{"wildcard", "a.b.example.org", "/x"},
		{"any-host", "unknown.net", "/api/x"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if r, _ := rt.Lookup(c.host, c.path); r == nil {
					b.Fatal("no route")
				}
			}
		})
	}
}

func TestRouterLookupDoesNotAllocate(t *testing.T) {
	rt := NewRouter(routesFor("api example.com /api", "wild *.example.org /", "root - /"))
	for _, c := range [][2]string{{"example.com:443", "/api/x"}, {"a.example.org", "/"}, {"x.net", "/y"}} {
		if n := testing.AllocsPerRun(100, func() { rt.Lookup(c[0], c[1]) }); n != 0 {
			t.Errorf("Lookup(%q, %q) allocates %.0f times", c[0], c[1], n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { cleanPath("/api/v1/users") }); n != 0 {
		t.Errorf("cleanPath allocates %.0f times on a clean path", n)
	}
}

// BenchmarkRewrite measures the per-request header work of forwarding:
// hop-by-hop removal, X-Forwarded-*, Host and configured edits.
func BenchmarkRewrite(b *testing.B) {
	sh := &shared{upstreams: map[string]*upstream{}, wsRoutes: map[string]*wsRoute{}, limiters: map[string]*routeLimiter{}}
	rc := &config.Route{Name: "api", Path: "/api", StripPrefix: true, HostHeader: config.HostPreserve,
		Headers: config.Headers{Request: config.HeaderOps{Set: map[string]string{"X-Gateway": "sluice"}, Remove: []string{"Cookie"}}}}
	u, _ := url.Parse("http://127.0.0.1:9000")
	rc.Upstreams = []*url.URL{u}
	r := newRoute(rc, sh, slog.New(slog.DiscardHandler))
	defer sh.transports.close()
	in := httptest.NewRequest("GET", "http://example.com/api/users/42?x=1", nil)
	in.RemoteAddr = "192.0.2.1:5000"
	in.Header = http.Header{
		"Accept": {"application/json"}, "User-Agent": {"curl/8"}, "Cookie": {"a=b"},
		"Accept-Encoding": {"gzip"}, "Authorization": {"Bearer x"},
	}
	info := &requestInfo{path: "/api/users/42"}
	in = in.WithContext(withInfo(in.Context(), info))
	b.ReportAllocs()
	for b.Loop() {
		out := in.Clone(in.Context())
		r.rewrite(&httputil.ProxyRequest{In: in, Out: out})
	}
}
