package proxy

import (
	"sort"
	"strings"

	"github.com/sluice-proxy/sluice/config"
)

// Router picks the route for a request by host and path. It is built once
// from a validated configuration and never modified, so any number of
// goroutines may call Lookup while a reload builds the next one.
//
// Precedence: an exact host match beats a wildcard match, a longer wildcard
// suffix beats a shorter one, and any host match beats routes with no hosts.
// Within the first group that has a match, the longest path prefix wins.
type Router struct {
	exact    map[string]*routeGroup // "api.example.com"
	wildcard map[string]*routeGroup // "*.example.com" is stored as "example.com"
	anyHost  *routeGroup            // routes without hosts
	maxWild  int                    // most labels in a wildcard suffix; bounds the lookup walk
}

// routeGroup holds the routes of one host key, longest path first.
type routeGroup struct {
	routes []*Route
}

// NewRouter builds a router over routes. The routes' paths must already be
// normalised by the config package (leading "/", no trailing "/" except root).
func NewRouter(routes []*Route) *Router {
	rt := &Router{
		exact:    make(map[string]*routeGroup),
		wildcard: make(map[string]*routeGroup),
		anyHost:  &routeGroup{},
	}
	add := func(m map[string]*routeGroup, key string, r *Route) {
		g := m[key]
		if g == nil {
			g = &routeGroup{}
			m[key] = g
		}
		g.routes = append(g.routes, r)
	}
	for _, r := range routes {
		if len(r.cfg.Hosts) == 0 {
			rt.anyHost.routes = append(rt.anyHost.routes, r)
			continue
		}
		for _, h := range r.cfg.Hosts {
			if suffix, ok := strings.CutPrefix(h, "*."); ok {
				add(rt.wildcard, suffix, r)
				if n := strings.Count(suffix, ".") + 1; n > rt.maxWild {
					rt.maxWild = n
				}
				continue
			}
			add(rt.exact, h, r)
		}
	}
	sortGroup := func(g *routeGroup) {
		// Stable keeps file order among equal lengths; config validation
		// rejects true duplicates, so ties are only different paths.
		sort.SliceStable(g.routes, func(i, j int) bool {
			return len(g.routes[i].cfg.Path) > len(g.routes[j].cfg.Path)
		})
	}
	for _, g := range rt.exact {
		sortGroup(g)
	}
	for _, g := range rt.wildcard {
		sortGroup(g)
	}
	sortGroup(rt.anyHost)
	return rt
}

// Lookup returns the route for host (as in a Host header: any case, an
// optional port, an optional trailing dot) and an already cleaned path.
// hostMatched reports whether the route named the host, as opposed to
// matching because it accepts any host. Lookup does not allocate for
// lower-case hosts.
func (rt *Router) Lookup(host, path string) (r *Route, hostMatched bool) {
	host = normalizeHost(host)
	if g := rt.exact[host]; g != nil {
		if r := g.match(path); r != nil {
			return r, true
		}
	}
	if len(rt.wildcard) > 0 {
		// Walk suffixes from the longest: for a.b.example.com try
		// "b.example.com", then "example.com", then "com".
		rest := host
		for {
			i := strings.IndexByte(rest, '.')
			if i < 0 {
				break
			}
			rest = rest[i+1:]
			if g := rt.wildcard[rest]; g != nil {
				if r := g.match(path); r != nil {
					return r, true
				}
			}
		}
	}
	return rt.anyHost.match(path), false
}

func (g *routeGroup) match(path string) *Route {
	for _, r := range g.routes {
		if pathHasPrefix(path, r.cfg.Path) {
			return r
		}
	}
	return nil
}

// pathHasPrefix reports whether prefix matches path on a segment boundary:
// "/api" matches "/api" and "/api/x" but not "/apix". "/" matches all.
func pathHasPrefix(path, prefix string) bool {
	if prefix == "/" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// normalizeHost strips a port and a trailing dot and lower-cases host. It
// allocates only when the host has upper-case letters.
func normalizeHost(host string) string {
	if host == "" {
		return host
	}
	if host[0] == '[' { // [::1]:8443
		if i := strings.IndexByte(host, ']'); i > 0 {
			host = host[1:i]
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		host = host[:i] // exactly one colon: host:port (a bare IPv6 has several)
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}

// cleanPath resolves "." and ".." segments and merges repeated slashes, as
// nginx does before matching locations, so that "/public/../admin" is routed
// (and forwarded) as "/admin". A trailing slash is kept. The common case of a
// path that needs nothing returns path itself without allocating.
func cleanPath(path string) string {
	if path == "" {
		return "/"
	}
	if path[0] != '/' {
		path = "/" + path
	}
	if !needsClean(path) {
		return path
	}
	var b strings.Builder
	b.Grow(len(path))
	segs := make([]string, 0, 8)
	for seg := range strings.SplitSeq(path[1:], "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		default:
			segs = append(segs, seg)
		}
	}
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(s)
	}
	last := path[strings.LastIndexByte(path, '/')+1:]
	if (last == "" || last == "." || last == "..") && len(segs) > 0 {
		b.WriteByte('/')
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

func needsClean(path string) bool {
	for i := 0; i < len(path); i++ {
		if path[i] != '/' {
			continue
		}
		rest := path[i+1:]
		if len(rest) == 0 {
			return false
		}
		switch {
		case rest[0] == '/':
			return true
		case rest[0] == '.':
			if len(rest) == 1 || rest[1] == '/' {
				return true
			}
			if rest[1] == '.' && (len(rest) == 2 || rest[2] == '/') {
				return true
			}
		}
	}
	return false
}

// routeConfig exposes a route's configuration to tests and callers that
// only have the *Route.
func (r *Route) Config() *config.Route { return r.cfg }
