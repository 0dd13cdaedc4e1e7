package tls

import (
	"slices"
	"testing"
)

func TestHostSet(t *testing.T) {
	h := newHostSet([]string{"API.example.com", "*.example.net", "*", "*.", "", "::0:1", "10.0.0.1"})
	for name, want := range map[string]bool{
		"api.example.com":    true,
		"x.api.example.com":  false,
		"example.net":        false, // the wildcard needs at least one label
		"a.example.net":      true,
		"a.b.example.net":    true, // one or more labels, as routing matches
		"aexample.net":       false,
		"::1":                true, // IP addresses in canonical form
		"10.0.0.1":           true,
		"10.0.0.2":           false,
		"":                   false,
		"api.example.com.":   false, // trailing dot: not what was configured
		"evil.example":       false,
		"localhost":          false,
		"a.example.net.evil": false,
	} {
		if got := h.allows(normalizeName(name)); got != want {
			t.Errorf("allows(%q) = %v; want %v", name, got, want)
		}
	}
	if got, want := h.exactNames(), []string{"10.0.0.1", "::1", "api.example.com"}; !slices.Equal(got, want) {
		t.Errorf("exactNames() = %q; want %q", got, want)
	}
	if got := h.wildcards(); !slices.Equal(got, []string{"*.example.net"}) {
		t.Errorf("wildcards() = %q", got)
	}
	if !localHosts.allows("x.y.localhost") || !localHosts.allows("::1") || localHosts.allows("localhost.example") {
		t.Error("localHosts does not match localhost, *.localhost and ::1 only")
	}
}
