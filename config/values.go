package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// This file parses single values. Each function gets the value after
// ${NAME} substitution and returns a message that quotes it.

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseUint(s, 10, 64); nerr == nil {
			return 0, fmt.Errorf("%q: a duration needs a unit (write e.g. %ss)", short(s), short(s))
		}
		return 0, fmt.Errorf("%q: not a duration (write e.g. 30s, 5m or 1h30m)", short(s))
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: must not be negative", short(s))
	}
	return d, nil
}

// sizeUnits are the multipliers of parseSize, by lower-cased unit. The
// one-letter forms are binary, as in nginx.
var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"kib": 1 << 10,
	"m":   1 << 20,
	"mib": 1 << 20,
	"g":   1 << 30,
	"gib": 1 << 30,
	"kb":  1e3,
	"mb":  1e6,
	"gb":  1e9,
}

// parseSize parses a byte count: a whole number with an optional unit,
// "512", "64KiB", "10MiB", "1GB", "8k". Units are case-insensitive.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%q: must not be negative", short(s))
	}
	digits := len(t) - len(strings.TrimLeft(t, "0123456789"))
	if digits == 0 {
		return 0, fmt.Errorf("%q: not a size (write e.g. 512, 64KiB or 10MiB)", short(s))
	}
	unit := strings.TrimSpace(t[digits:])
	if strings.HasPrefix(unit, ".") {
		return 0, fmt.Errorf("%q: a size is a whole number (write e.g. 1536KiB for 1.5MiB)", short(s))
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (use KiB, MiB, GiB, KB, MB, GB, or k, m, g)", short(s), short(unit))
	}
	n, err := strconv.ParseInt(t[:digits], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q: too large", short(s))
	}
	return n * mult, nil
}

// parseCount parses a non-negative whole number.
func parseCount(s string) (int, error) {
	n, err := strconv.ParseInt(s, 10, strconv.IntSize)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return 0, fmt.Errorf("%q: too large", short(s))
	case err != nil:
		return 0, fmt.Errorf("%q: want a whole number", short(s))
	case n < 0:
		return 0, fmt.Errorf("%q: must not be negative", short(s))
	}
	return int(n), nil
}

// maxRate bounds rates so that their default bursts fit an int.
const maxRate = 1e9

// parseRate parses a non-negative rate per second, which may have a
// fraction ("0.5" is one every two seconds).
func parseRate(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange), math.IsNaN(f):
		return 0, fmt.Errorf("%q: want a number", short(s))
	case f < 0:
		return 0, fmt.Errorf("%q: must not be negative", short(s))
	case f > maxRate:
		return 0, fmt.Errorf("%q: too large (at most %d)", short(s), int64(maxRate))
	}
	return f, nil
}

func parseBool(s string) (bool, error) {
	switch s {
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE":
		return false, nil
	}
	return false, fmt.Errorf("%q: want true or false", short(s))
}

func parseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q: want debug, info, warn or error", short(s))
}

// checkAddr checks a listen address: host:port with a numeric port; the
// host may be empty (all interfaces), an IP address or a name.
func checkAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if _, nerr := strconv.ParseUint(s, 10, 16); nerr == nil {
			return fmt.Errorf("%q: want host:port (write \":%s\" for all interfaces)", short(s), s)
		}
		return fmt.Errorf("%q: want host:port, e.g. \":443\" or \"127.0.0.1:8443\"", short(s))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", short(s), short(port))
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validDNSName(host) {
		return fmt.Errorf("%q: %q is not an IP address or host name", short(s), short(host))
	}
	return nil
}

// validDNSName reports whether s is a host name: dot-separated labels of
// letters, digits, '-' and '_', not starting or ending with '-'.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// normHost checks a route host and returns it in the form the router
// compares: lower case, no trailing dot, IP addresses in canonical form
// without brackets.
func normHost(s string) (string, error) {
	h := strings.ToLower(strings.TrimSuffix(s, "."))
	if h == "" {
		return "", fmt.Errorf("%q: empty host name (leave hosts out to match any host)", s)
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("%q: an IPv6 zone cannot be matched", short(s))
		}
		return a.String(), nil
	}
	if strings.Contains(h, "/") {
		return "", fmt.Errorf("%q: a host is a bare name such as api.example.com, without scheme or path", short(s))
	}
	if host, _, err := net.SplitHostPort(h); err == nil && host != "" {
		return "", fmt.Errorf("%q: hosts are matched without a port; write %q (the port comes from the listener)", short(s), short(host))
	}
	name := h
	if rest, ok := strings.CutPrefix(h, "*."); ok {
		name = rest
	}
	if strings.Contains(name, "*") {
		if h == "*" {
			return "", fmt.Errorf("%q: leave hosts out to match any host", s)
		}
		return "", fmt.Errorf("%q: a wildcard must be the whole first label, as in *.example.com", short(s))
	}
	for _, c := range []byte(name) {
		if c >= 0x80 {
			return "", fmt.Errorf("%q: write an internationalised name in its ASCII (xn--) form", short(s))
		}
	}
	if !validDNSName(name) {
		return "", fmt.Errorf("%q: not a valid host name", short(s))
	}
	return h, nil
}

// parseUpstream parses an upstream URL: http or https, with a host, and
// without user info, query or fragment.
func parseUpstream(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		return nil, fmt.Errorf("%q: missing scheme (write %q)", short(s), "http://"+short(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%q: not a URL: %v", short(s), err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: scheme must be http or https", short(s))
	case u.Hostname() == "":
		return nil, fmt.Errorf("%q: missing host", short(s))
	case u.User != nil:
		return nil, fmt.Errorf("%q: user info is not allowed (set an Authorization header under headers.request.set)", short(s))
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("%q: a query is not allowed", short(s))
	case u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("%q: a fragment is not allowed", short(s))
	}
	if p := u.Port(); p != "" {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return nil, fmt.Errorf("%q: port %q is not a number from 0 to 65535", short(s), short(p))
		}
	}
	return u, nil
}

// normOrigin checks an allowed WebSocket Origin and returns it lower-cased,
// as scheme://host[:port].
func normOrigin(s string) (string, error) {
	if s == "*" {
		return "", fmt.Errorf("%q: leave origins empty to allow any origin", s)
	}
	u, err := url.Parse(strings.ToLower(strings.TrimSuffix(s, "/")))
	if err != nil || u.Scheme == "" || u.Hostname() == "" || strings.Contains(u.Host, "*") || u.Opaque != "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#") {
		return "", fmt.Errorf("%q: want an origin such as https://app.example.com or http://localhost:3000", short(s))
	}
	return u.Scheme + "://" + u.Host, nil
}

// checkCA checks an ACME directory URL.
func checkCA(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q: want an https URL of an ACME directory", short(s))
	}
	return nil
}

// checkEmail checks an ACME contact address loosely: one @ with text on
// both sides and no spaces.
func checkEmail(s string) error {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || domain == "" || strings.ContainsAny(s, " \t<>") || strings.Contains(domain, "@") {
		return fmt.Errorf("%q: not an email address", short(s))
	}
	return nil
}

// parseTrustedProxy parses a CIDR, or a bare IP address meaning that one
// address.
func parseTrustedProxy(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: not a CIDR such as 10.0.0.0/8 or fd00::/8", short(s))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: not an IP address or CIDR", short(s))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// checkPath checks a route path and returns it without a trailing slash.
func checkPath(s string) (string, error) {
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("%q: must start with /", short(s))
	}
	if strings.ContainsAny(s, "?#") {
		return "", fmt.Errorf("%q: a path prefix cannot hold a query (?) or fragment (#)", short(s))
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f {
			return "", fmt.Errorf("%q: spaces and control characters are not allowed (percent-encode them)", short(s))
		}
	}
	p := s
	if p != "/" {
		p = strings.TrimSuffix(p, "/")
	}
	if p != "/" {
		for seg := range strings.SplitSeq(p[1:], "/") {
			if seg == "" || seg == "." || seg == ".." {
				return "", fmt.Errorf("%q: empty, . and .. segments are not allowed", short(s))
			}
		}
	}
	return p, nil
}

// noSetHeaders cannot be set by headers.*.set, with the reason.
var noSetHeaders = map[string]string{
	"Connection":          "hop-by-hop headers are not forwarded",
	"Keep-Alive":          "hop-by-hop headers are not forwarded",
	"Proxy-Connection":    "hop-by-hop headers are not forwarded",
	"Proxy-Authenticate":  "hop-by-hop headers are not forwarded",
	"Proxy-Authorization": "hop-by-hop headers are not forwarded",
	"Te":                  "hop-by-hop headers are not forwarded",
	"Trailer":             "hop-by-hop headers are not forwarded",
	"Transfer-Encoding":   "hop-by-hop headers are not forwarded",
	"Upgrade":             "hop-by-hop headers are not forwarded",
	"Content-Length":      "the proxy sets it from the body",
	"Host":                "use host_header to choose the upstream Host",
}

// canonHeader checks a header name and returns its canonical form.
func canonHeader(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty header name")
	}
	for _, c := range []byte(s) {
		if !isTokenChar(c) {
			return "", fmt.Errorf("%q: not a valid header name", short(s))
		}
	}
	return http.CanonicalHeaderKey(s), nil
}

// isTokenChar reports whether c may appear in an HTTP token (RFC 9110).
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validHeaderValue reports whether s may be sent as a header value: no
// control characters other than tab.
func validHeaderValue(s string) bool {
	for _, c := range []byte(s) {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
