package config

import (
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// This file is the YAML-facing schema: which keys exist where, and how each
// value is parsed into the runtime form. Fields the file leaves out stay
// unmarked and get their defaults in setDefaults.

// config decodes the top-level mapping.
func (d *decoder) config(root *yaml.Node, c *Config) {
	d.mapping(root, "", []field{
		{"listen", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"http", func(n *yaml.Node, p string) { value(d, n, p, &c.Listen.HTTP, parseListen) }},
				{"https", func(n *yaml.Node, p string) { value(d, n, p, &c.Listen.HTTPS, parseListen) }},
			}, nil)
		}},
		{"tls", func(n *yaml.Node, p string) { d.tls(n, p, &c.TLS) }},
		{"admin", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"listen", func(n *yaml.Node, p string) { value(d, n, p, &c.Admin.Listen, parseListen) }},
			}, nil)
		}},
		{"log", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"access", func(n *yaml.Node, p string) { value(d, n, p, &c.Log.Access, parseAccess) }},
				{"level", func(n *yaml.Node, p string) { value(d, n, p, &c.Log.Level, parseLevel) }},
			}, nil)
		}},
		{"trusted_proxies", func(n *yaml.Node, p string) {
			d.mark(&c.TrustedProxies, n, p)
			for i, item := range d.list(n, p) {
				if pr, ok := parseScalar(d, item, index(p, i), parseTrustedProxy); ok {
					c.TrustedProxies = append(c.TrustedProxies, pr)
				}
			}
		}},
		{"timeouts", func(n *yaml.Node, p string) { d.timeouts(n, p, &c.Timeouts, false) }},
		{"routes", func(n *yaml.Node, p string) { d.routes(n, p, c) }},
	}, movedTo(map[string]string{
		"http":  "listen.http",
		"https": "listen.https",
		"mode":  "tls.mode",
		"level": "log.level",
		"route": "routes",
	}))
}

// movedTo explains unknown keys that belong in another section.
func movedTo(where map[string]string) func(string) string {
	return func(key string) string {
		if w, ok := where[key]; ok {
			return fmt.Sprintf("unknown field %q (did you mean %q?)", key, w)
		}
		return ""
	}
}

func (d *decoder) tls(n *yaml.Node, path string, t *TLS) {
	d.mapping(n, path, []field{
		{"mode", func(n *yaml.Node, p string) {
			value(d, n, p, &t.Mode, parseEnum(TLSACME, TLSInternal, TLSFiles, TLSOff))
		}},
		{"email", func(n *yaml.Node, p string) {
			value(d, n, p, &t.Email, func(s string) (string, error) {
				if s == "" {
					return "", nil
				}
				return s, checkEmail(s)
			})
		}},
		{"ca", func(n *yaml.Node, p string) {
			value(d, n, p, &t.CA, func(s string) (string, error) { return s, checkCA(s) })
		}},
		{"ca_root", func(n *yaml.Node, p string) { value(d, n, p, &t.CARoot, parseString) }},
		{"storage", func(n *yaml.Node, p string) { value(d, n, p, &t.Storage, parsePath) }},
		{"certificates", func(n *yaml.Node, p string) {
			d.mark(&t.Certificates, n, p)
			items := d.mappingItems(n, p)
			t.Certificates = make([]CertFile, len(items))
			for i, it := range items {
				cf := &t.Certificates[i]
				d.mapping(it.node, it.path, []field{
					{"cert", func(n *yaml.Node, p string) { value(d, n, p, &cf.Cert, parsePath) }},
					{"key", func(n *yaml.Node, p string) { value(d, n, p, &cf.Key, parsePath) }},
				}, nil)
				if !d.isSet(&cf.Cert) {
					d.errorf(it.node, it.path, "cert is missing")
				}
				if !d.isSet(&cf.Key) {
					d.errorf(it.node, it.path, "key is missing")
				}
			}
		}},
		{"hsts", func(n *yaml.Node, p string) { value(d, n, p, &t.HSTS, parseDuration) }},
	}, nil)
}

// timeouts decodes server-wide timeouts, or with route set the per-route
// overrides, which are only connect and response_header.
func (d *decoder) timeouts(n *yaml.Node, path string, t *Timeouts, route bool) {
	fields := []field{
		{"connect", func(n *yaml.Node, p string) { value(d, n, p, &t.Connect, parseDuration) }},
		{"response_header", func(n *yaml.Node, p string) { value(d, n, p, &t.ResponseHeader, parseDuration) }},
	}
	var unknown func(string) string
	if route {
		unknown = func(key string) string {
			switch key {
			case "read_header", "idle", "shutdown":
				return fmt.Sprintf("%q is server-wide: set it under the top-level timeouts (a route can set only connect and response_header)", key)
			}
			return ""
		}
	} else {
		fields = append(fields,
			field{"read_header", func(n *yaml.Node, p string) { value(d, n, p, &t.ReadHeader, parseDuration) }},
			field{"idle", func(n *yaml.Node, p string) { value(d, n, p, &t.Idle, parseDuration) }},
			field{"shutdown", func(n *yaml.Node, p string) { value(d, n, p, &t.Shutdown, parseDuration) }},
		)
	}
	d.mapping(n, path, fields, unknown)
}

func (d *decoder) routes(n *yaml.Node, path string, c *Config) {
	d.mark(&c.Routes, n, path)
	items := d.mappingItems(n, path)
	c.Routes = make([]Route, len(items))
	for i, it := range items {
		r := &c.Routes[i]
		d.mark(r, it.node, it.path)
		d.route(it.node, it.path, r)
	}
}

func (d *decoder) route(n *yaml.Node, path string, r *Route) {
	d.mapping(n, path, []field{
		{"name", func(n *yaml.Node, p string) { value(d, n, p, &r.Name, parseName) }},
		{"hosts", func(n *yaml.Node, p string) {
			d.mark(&r.Hosts, n, p)
			first := make(map[string]int)
			for i, item := range d.list(n, p) {
				h, ok := parseScalar(d, item, index(p, i), normHost)
				if !ok {
					continue
				}
				if j, dup := first[h]; dup {
					d.errorf(item, index(p, i), "%q is listed twice (also hosts[%d])", h, j)
					continue
				}
				first[h] = i
				r.Hosts = append(r.Hosts, h)
			}
		}},
		{"path", func(n *yaml.Node, p string) { value(d, n, p, &r.Path, checkPath) }},
		{"strip_prefix", func(n *yaml.Node, p string) { value(d, n, p, &r.StripPrefix, parseBool) }},
		{"upstreams", func(n *yaml.Node, p string) {
			d.mark(&r.Upstreams, n, p)
			items := d.list(n, p)
			for i, item := range items {
				if u, ok := parseScalar(d, item, index(p, i), parseUpstream); ok {
					r.Upstreams = append(r.Upstreams, u)
				}
			}
			if m := d.resolve(n); m != nil && m.Kind == yaml.SequenceNode && len(m.Content) == 0 {
				d.errorf(n, p, "at least one upstream is needed")
			}
		}},
		{"host_header", func(n *yaml.Node, p string) {
			value(d, n, p, &r.HostHeader, parseEnum(HostPreserve, HostUpstream))
		}},
		{"max_body", func(n *yaml.Node, p string) { value(d, n, p, &r.MaxBody, parseSize) }},
		{"flush_interval", func(n *yaml.Node, p string) { value(d, n, p, &r.FlushInterval, parseDuration) }},
		{"headers", func(n *yaml.Node, p string) {
			d.mapping(n, p, []field{
				{"request", func(n *yaml.Node, p string) { d.headerOps(n, p, &r.Headers.Request) }},
				{"response", func(n *yaml.Node, p string) { d.headerOps(n, p, &r.Headers.Response) }},
			}, nil)
		}},
		{"rate_limit", func(n *yaml.Node, p string) {
			rl := &r.RateLimit
			d.mapping(n, p, []field{
				{"requests_per_second", func(n *yaml.Node, p string) { value(d, n, p, &rl.RequestsPerSecond, parseRate) }},
				{"burst", func(n *yaml.Node, p string) { value(d, n, p, &rl.Burst, parseCount) }},
			}, nil)
		}},
		{"websocket", func(n *yaml.Node, p string) { d.websocket(n, p, &r.WebSocket) }},
		{"timeouts", func(n *yaml.Node, p string) { d.timeouts(n, p, &r.Timeouts, true) }},
	}, movedTo(map[string]string{
		"upstream":               "upstreams",
		"host":                   "hosts",
		"requests_per_second":    "rate_limit.requests_per_second",
		"burst":                  "rate_limit.burst",
		"origins":                "websocket.origins",
		"max_connections":        "websocket.max_connections",
		"max_connections_per_ip": "websocket.max_connections_per_ip",
		"messages_per_second":    "websocket.messages_per_second",
		"max_message_size":       "websocket.max_message_size",
		"on_limit":               "websocket.on_limit",
		"idle_timeout":           "websocket.idle_timeout",
		"ping_interval":          "websocket.ping_interval",
		"connect":                "timeouts.connect",
		"response_header":        "timeouts.response_header",
		"set":                    "headers.request.set or headers.response.set",
		"remove":                 "headers.request.remove or headers.response.remove",
	}))
}

func (d *decoder) websocket(n *yaml.Node, path string, ws *WebSocket) {
	d.mapping(n, path, []field{
		{"enabled", func(n *yaml.Node, p string) { value(d, n, p, &ws.Enabled, parseBool) }},
		{"origins", func(n *yaml.Node, p string) {
			d.mark(&ws.Origins, n, p)
			for i, item := range d.list(n, p) {
				if o, ok := parseScalar(d, item, index(p, i), normOrigin); ok {
					ws.Origins = append(ws.Origins, o)
				}
			}
		}},
		{"max_connections", func(n *yaml.Node, p string) { value(d, n, p, &ws.MaxConnections, parseCount) }},
		{"max_connections_per_ip", func(n *yaml.Node, p string) { value(d, n, p, &ws.MaxConnectionsPerIP, parseCount) }},
		{"messages_per_second", func(n *yaml.Node, p string) { value(d, n, p, &ws.MessagesPerSecond, parseRate) }},
		{"message_burst", func(n *yaml.Node, p string) { value(d, n, p, &ws.MessageBurst, parseCount) }},
		{"bytes_per_second", func(n *yaml.Node, p string) { value(d, n, p, &ws.BytesPerSecond, parseSize) }},
		{"max_message_size", func(n *yaml.Node, p string) { value(d, n, p, &ws.MaxMessageSize, parseSize) }},
		{"on_limit", func(n *yaml.Node, p string) {
			value(d, n, p, &ws.OnLimit, parseEnum(OnLimitThrottle, OnLimitClose))
		}},
		{"idle_timeout", func(n *yaml.Node, p string) { value(d, n, p, &ws.IdleTimeout, parseDuration) }},
		{"ping_interval", func(n *yaml.Node, p string) { value(d, n, p, &ws.PingInterval, parseDuration) }},
	}, nil)
}

// headerOps decodes {set: {NAME: VALUE}, remove: [NAME]}.
func (d *decoder) headerOps(n *yaml.Node, path string, h *HeaderOps) {
	d.mapping(n, path, []field{
		{"set", func(n *yaml.Node, p string) {
			m := d.resolve(n)
			if m == nil {
				return
			}
			if m.Kind != yaml.MappingNode {
				d.errorf(n, p, "want a mapping of header names to values, got %s", describe(m))
				return
			}
			first := make(map[string]*yaml.Node)
			for _, kv := range d.pairs(m, p, 0) {
				name, err := canonHeader(kv.key.Value)
				if err != nil {
					d.errorf(kv.key, p, "%v", err)
					continue
				}
				if why, ok := noSetHeaders[name]; ok {
					d.errorf(kv.key, p, "%s cannot be set: %s", name, why)
					continue
				}
				if f := first[name]; f != nil {
					d.errorf(kv.key, p, "%q is the same header as %q at line %d", kv.key.Value, f.Value, f.Line)
					continue
				}
				first[name] = kv.key
				v, ok := d.scalar(kv.val, join(p, name))
				if !ok {
					continue
				}
				if !validHeaderValue(v) {
					// The value may be a secret from the environment: do not quote it.
					d.errorf(kv.val, join(p, name), "the value holds a control character (line breaks are not allowed)")
					continue
				}
				if h.Set == nil {
					h.Set = make(map[string]string)
				}
				h.Set[name] = v
			}
		}},
		{"remove", func(n *yaml.Node, p string) {
			for i, item := range d.list(n, p) {
				if name, ok := parseScalar(d, item, index(p, i), canonHeader); ok && !slices.Contains(h.Remove, name) {
					h.Remove = append(h.Remove, name)
				}
			}
		}},
	}, nil)
}

// item is a list item with its field path.
type item struct {
	node *yaml.Node
	path string
}

// mappingItems returns the items of list n that are mappings, reporting
// the others.
func (d *decoder) mappingItems(n *yaml.Node, path string) []item {
	var out []item
	for i, it := range d.list(n, path) {
		p := index(path, i)
		m := d.resolve(it)
		switch {
		case m == nil:
			d.errorf(it, p, "empty list item")
		case m.Kind != yaml.MappingNode:
			d.errorf(it, p, "want a mapping, got %s", describe(m))
		default:
			out = append(out, item{m, p})
		}
	}
	return out
}

// value decodes scalar n into *dst with parse and marks the field as set
// by the file. The field is marked even when the value is bad, so that
// neither a default nor a check of another field contradicts the file;
// parse's result is stored even with an error, for the same reason.
func value[T any](d *decoder, n *yaml.Node, path string, dst *T, parse func(string) (T, error)) {
	d.mark(dst, n, path)
	s, ok := d.scalar(n, path)
	if !ok {
		return
	}
	v, err := parse(s)
	*dst = v
	if err != nil {
		d.errorf(n, path, "%v", err)
	}
}

// parseScalar decodes scalar n with parse, reporting any error.
func parseScalar[T any](d *decoder, n *yaml.Node, path string, parse func(string) (T, error)) (T, bool) {
	var zero T
	s, ok := d.scalar(n, path)
	if !ok {
		return zero, false
	}
	v, err := parse(s)
	if err != nil {
		d.errorf(n, path, "%v", err)
		return zero, false
	}
	return v, true
}

func parseEnum[T ~string](allowed ...T) func(string) (T, error) {
	return func(s string) (T, error) {
		words := make([]string, len(allowed))
		for i, a := range allowed {
			if string(a) == s {
				return a, nil
			}
			words[i] = string(a)
		}
		return "", fmt.Errorf("%q: want %s", short(s), oneOf(words))
	}
}

func parseString(s string) (string, error) { return s, nil }

// parseListen parses a listen address; "off" or "" disables the listener.
func parseListen(s string) (string, error) {
	if s == "" || s == "off" {
		return "", nil
	}
	return s, checkAddr(s)
}

func parseAccess(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf(`empty: want stdout, stderr, off or a file path`)
	}
	return s, nil
}

func parsePath(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty: want a file path")
	}
	return s, nil
}

func parseName(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return s, fmt.Errorf("a route name cannot be empty (leave it out for the default)")
	}
	if !validHeaderValue(s) || strings.ContainsRune(s, '\t') {
		return s, fmt.Errorf("%q: control characters are not allowed", short(s))
	}
	return s, nil
}
