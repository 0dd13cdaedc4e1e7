// Package config owns sluice's configuration: the YAML schema a sysadmin
// edits, the defaults, and validation that reports every problem with its
// file, line, column and field path.
//
// There are two shapes. The YAML-facing shape lives only inside the loader;
// what Load returns is the validated runtime form below, with parsed values
// (durations, sizes, URLs, prefixes), so runtime code never re-parses
// strings. A *Config is immutable once returned: callers share it freely and
// swap a whole new one on reload.
//
// This package does no networking.
package config

import (
	"log/slog"
	"net/netip"
	"net/url"
	"time"
)

// Config is a validated sluice configuration.
type Config struct {
	// File is the path the configuration was read from ("" when loaded from
	// bytes without a name).
	File string

	Listen         Listen
	TLS            TLS
	Admin          Admin
	Log            Log
	TrustedProxies []netip.Prefix // peers whose X-Forwarded-For is believed; default none
	Timeouts       Timeouts
	Routes         []Route
}

// Listen names the public listeners.
type Listen struct {
	// HTTP is the plain-HTTP address. Default ":80". With TLS on it answers
	// ACME HTTP-01 challenges and redirects everything else to https.
	// "" (written as `off` or "") disables it. An address is host:port with
	// a numeric port; an empty host means all interfaces.
	HTTP string
	// HTTPS is the TLS address, "" when TLS is off. Default "" (no TLS).
	HTTPS string
}

// TLSMode says where certificates come from.
type TLSMode string

const (
	TLSOff      TLSMode = "off"      // no TLS; listen.https must be empty
	TLSACME     TLSMode = "acme"     // certificates from an RFC 8555 CA via certmagic
	TLSInternal TLSMode = "internal" // certificates from a local CA kept in Storage
	TLSFiles    TLSMode = "files"    // PEM pairs from Certificates, chosen by SNI
)

// TLS configures certificates for the https listener.
type TLS struct {
	// Mode defaults to acme when listen.https is set, off otherwise.
	Mode TLSMode
	// Email is the ACME account contact (acme mode). Optional.
	Email string
	// CA is the ACME directory URL (acme mode). Default Let's Encrypt
	// production: https://acme-v02.api.letsencrypt.org/directory.
	CA string
	// CARoot is a PEM file of roots to trust when talking to CA, for a
	// private ACME server such as Pebble. "" = system roots. A relative
	// path in the file is relative to the config file's directory; Load
	// returns it resolved.
	CARoot string
	// Storage is the directory for certificates, keys, the ACME account and
	// the internal CA. Default "./sluice-data". A relative path is relative
	// to the config file's directory; Load returns it resolved.
	Storage string
	// Certificates are the PEM pairs of files mode. Relative paths are
	// relative to the config file's directory; Load returns them resolved
	// and has checked that the files exist.
	Certificates []CertFile
	// HSTS is the Strict-Transport-Security max-age sent on https
	// responses; 0 (default) sends none.
	HSTS time.Duration
}

// CertFile is one certificate and key pair, both PEM files.
type CertFile struct {
	Cert string
	Key  string
}

// Admin configures the admin listener (/healthz, /metrics).
type Admin struct {
	// Listen is the admin address. Default "127.0.0.1:9901". "" (written as
	// `off`) disables it.
	Listen string
}

// Log configures logging.
type Log struct {
	// Access is where access-log lines go: "stdout" (default), "stderr",
	// "off", or a file path (appended to). A relative path is relative to
	// the config file's directory; Load returns it resolved (write "./off"
	// for a file named off).
	Access string
	// Level is the level of the process log on stderr. Default info.
	Level slog.Level
}

// Timeouts are server-wide defaults; Connect and ResponseHeader may be
// overridden per route. None is negative.
type Timeouts struct {
	ReadHeader     time.Duration // client must send its request headers within this; default 10s; 0 = no limit (not recommended)
	Idle           time.Duration // keep-alive connection with no request is closed after this; default 2m; 0 = no limit
	Connect        time.Duration // dial to an upstream; default 5s; 0 = no limit of our own (the OS's applies)
	ResponseHeader time.Duration // upstream must start its response within this; default 60s; 0 = no limit
	Shutdown       time.Duration // grace period for in-flight requests on SIGTERM; default 30s; 0 = none, stop at once
}

// HostHeader says which Host header goes upstream.
type HostHeader string

const (
	HostPreserve HostHeader = "preserve" // the client's Host (default)
	HostUpstream HostHeader = "upstream" // the upstream URL's host:port
)

// Route is one entry of the routing table.
type Route struct {
	// Name is used in logs and metrics. Default: first host + path, or the
	// path alone when Hosts is empty.
	Name string
	// Hosts are lower-case host names without port; "*.example.com" matches
	// any name ending in ".example.com" (one or more labels). Empty = any host.
	// A trailing dot is dropped; an IP address is in its canonical form
	// (netip.Addr.String), IPv6 without brackets.
	Hosts []string
	// Path is the prefix matched on segment boundaries, always starting with
	// "/" and never ending in "/" unless it is exactly "/": "/api" matches
	// "/api" and "/api/x", not "/apix". A trailing slash in the file is
	// dropped ("/api/" is the same route as "/api"). Default "/".
	Path string
	// StripPrefix removes Path from the request path before forwarding
	// ("/api/x" -> "/x", "/api" -> "/"). Default false.
	StripPrefix bool
	// Upstreams are tried in round robin; at least one. Scheme http or
	// https; a path, if any, is prepended to the forwarded path.
	Upstreams []*url.URL
	// HostHeader: default preserve.
	HostHeader HostHeader
	// MaxBody is the largest request body in bytes; larger gets 413.
	// Default 10 MiB; 0 = unlimited.
	MaxBody int64
	// FlushInterval: 0 (default) flushes streaming responses (SSE, unknown
	// length) at once and others when the copy buffer fills; a positive
	// value also flushes every response at that period.
	FlushInterval time.Duration
	Headers       Headers
	RateLimit     RateLimit
	WebSocket     WebSocket
	// Timeouts holds the effective Connect and ResponseHeader for this route
	// (the server-wide values unless the route overrides them). The other
	// fields are copied from the server-wide values.
	Timeouts Timeouts
}

// Headers are header edits applied on the way up and on the way back.
type Headers struct {
	Request  HeaderOps
	Response HeaderOps
}

// HeaderOps edits headers: Remove first, then Set. Names are canonical
// (http.CanonicalHeaderKey). Set never names a hop-by-hop header
// (Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding,
// Upgrade), Content-Length or Host, and its values hold no control
// characters other than tab.
type HeaderOps struct {
	Set    map[string]string // replaces any existing value
	Remove []string
}

// RateLimit limits plain HTTP requests per client IP.
type RateLimit struct {
	// RequestsPerSecond is the refill rate; 0 (default) = no limit.
	RequestsPerSecond float64
	// Burst is the bucket size; default ceil(RequestsPerSecond), at least 1.
	Burst int
}

// OnLimit says what happens when a WebSocket connection exceeds a rate.
type OnLimit string

const (
	OnLimitThrottle OnLimit = "throttle" // stop reading from the client until tokens are available (default)
	OnLimitClose    OnLimit = "close"    // close 1008 to the client, 1001 to the backend
)

// WebSocket configures Upgrade: websocket requests on a route.
type WebSocket struct {
	Enabled             bool     // default true
	Origins             []string // allowed Origin values, lower-cased scheme://host[:port], compared case-insensitively; empty = any
	MaxConnections      int      // concurrent on this route; 0 = unlimited
	MaxConnectionsPerIP int      // concurrent per client IP on this route; 0 = unlimited
	MessagesPerSecond   float64  // per connection, client -> backend; 0 = unlimited
	MessageBurst        int      // default ceil(MessagesPerSecond), at least 1
	BytesPerSecond      int64    // per connection, client -> backend; 0 = unlimited
	MaxMessageSize      int64    // bytes; 0 = unlimited; larger -> close 1009
	OnLimit             OnLimit  // default throttle
	// IdleTimeout closes the connection (1001) when no frame passed either
	// way for this long; 0 (default) = never.
	IdleTimeout time.Duration
	// PingInterval is how often the proxy pings the client; the client's
	// pongs are not forwarded. 0 (default) = never.
	PingInterval time.Duration
}
