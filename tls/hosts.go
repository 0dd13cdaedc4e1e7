package tls

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/sluice-proxy/sluice/config"
)

// hostSet is the set of server names a Manager will serve, and in internal
// mode issue, certificates for. It is immutable once built.
type hostSet struct {
	exact map[string]struct{}
	// suffixes hold ".example.com" for a configured "*.example.com", which
	// matches any name ending in ".example.com" (one or more labels), as
	// routing does.
	suffixes []string
}

// localNames are the names internal mode always serves: a developer's own
// machine.
var localNames = []string{"localhost", "127.0.0.1", "::1", "*.localhost"}

// newHostSet builds a hostSet from names as written in routes[].hosts
// ("api.example.com", "*.example.com"). Names are compared in lower case.
func newHostSet(names ...[]string) hostSet {
	h := hostSet{exact: make(map[string]struct{})}
	for _, list := range names {
		for _, n := range list {
			n = normalizeName(n)
			if n == "" {
				continue
			}
			if suffix, ok := strings.CutPrefix(n, "*"); ok {
				if strings.HasPrefix(suffix, ".") && len(suffix) > 1 && !slices.Contains(h.suffixes, suffix) {
					h.suffixes = append(h.suffixes, suffix)
				}
				continue
			}
			h.exact[n] = struct{}{}
		}
	}
	return h
}

// allows reports whether name (already normalized) is in the set.
func (h hostSet) allows(name string) bool {
	if name == "" {
		return false
	}
	if _, ok := h.exact[name]; ok {
		return true
	}
	for _, s := range h.suffixes {
		if len(name) > len(s) && strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// allowsExact reports whether name (already normalized) is in the set as
// itself, not through a wildcard.
func (h hostSet) allowsExact(name string) bool {
	_, ok := h.exact[name]
	return ok
}

// wildcards returns the wildcard names ("*.example.com").
func (h hostSet) wildcards() []string {
	out := make([]string, 0, len(h.suffixes))
	for _, s := range h.suffixes {
		out = append(out, "*"+s)
	}
	return out
}

// exactNames returns the non-wildcard names, sorted.
func (h hostSet) exactNames() []string {
	out := make([]string, 0, len(h.exact))
	for n := range h.exact {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// configuredHosts returns every name in cfg.Routes[].Hosts.
func configuredHosts(cfg *config.Config) []string {
	var out []string
	for _, r := range cfg.Routes {
		out = append(out, r.Hosts...)
	}
	return out
}

// normalizeName lower-cases a server name and writes IP addresses in their
// canonical form ("::1", not "0:0:0:0:0:0:0:1"). A name with a trailing dot
// is kept as it is, so it matches nothing configured.
func normalizeName(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if ip, err := netip.ParseAddr(name); err == nil {
		return ip.WithZone("").Unmap().String()
	}
	return name
}

// localIP returns the IP address the client connected to, for a ClientHello
// without SNI (clients never send IP addresses as SNI).
func localIP(c net.Conn) string {
	if c == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(c.LocalAddr().String())
	if err != nil {
		return ""
	}
	return normalizeName(host)
}
