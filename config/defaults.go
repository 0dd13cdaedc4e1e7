package config

import (
	"log/slog"
	"math"
	"path/filepath"
	"time"
)

const defaultCA = "https://acme-v02.api.letsencrypt.org/directory"

// setDefaults fills in every field the file left out; isSet reports, by a
// field's address, whether the file set it. This is the one place where
// defaults live; they match the doc comments in config.go.
func setDefaults(c *Config, isSet func(ptr any) bool) {
	def(isSet, &c.Listen.HTTP, ":80")
	if c.Listen.HTTPS != "" {
		def(isSet, &c.TLS.Mode, TLSACME)
	} else {
		def(isSet, &c.TLS.Mode, TLSOff)
	}
	def(isSet, &c.TLS.CA, defaultCA)
	def(isSet, &c.TLS.Storage, "./sluice-data")
	def(isSet, &c.Admin.Listen, "127.0.0.1:9901")
	def(isSet, &c.Log.Access, "stdout")
	def(isSet, &c.Log.Level, slog.LevelInfo)

	t := &c.Timeouts
	def(isSet, &t.ReadHeader, 10*time.Second)
	def(isSet, &t.Idle, 2*time.Minute)
	def(isSet, &t.Connect, 5*time.Second)
	def(isSet, &t.ResponseHeader, 60*time.Second)
	def(isSet, &t.Shutdown, 30*time.Second)

	for i := range c.Routes {
		r := &c.Routes[i]
		def(isSet, &r.Path, "/")
		if len(r.Hosts) > 0 {
			def(isSet, &r.Name, r.Hosts[0]+r.Path)
		} else {
			def(isSet, &r.Name, r.Path)
		}
		def(isSet, &r.HostHeader, HostPreserve)
		def(isSet, &r.MaxBody, 10<<20)
		def(isSet, &r.RateLimit.Burst, defaultBurst(r.RateLimit.RequestsPerSecond))

		ws := &r.WebSocket
		def(isSet, &ws.Enabled, true)
		def(isSet, &ws.OnLimit, OnLimitThrottle)
		def(isSet, &ws.MessageBurst, defaultBurst(ws.MessagesPerSecond))

		// A route may override connect and response_header; everything
		// else is the server-wide value.
		rt := &r.Timeouts
		def(isSet, &rt.Connect, t.Connect)
		def(isSet, &rt.ResponseHeader, t.ResponseHeader)
		rt.ReadHeader, rt.Idle, rt.Shutdown = t.ReadHeader, t.Idle, t.Shutdown
	}
}

// def sets *ptr to v unless the file set it.
func def[T any](isSet func(ptr any) bool, ptr *T, v T) {
	if !isSet(ptr) {
		*ptr = v
	}
}

// defaultBurst is the bucket size for a rate: ceil(rate), at least 1.
// Rates are at most maxRate, so the result fits an int.
func defaultBurst(rate float64) int {
	return max(1, int(math.Ceil(rate)))
}

// resolvePaths makes the file paths of c relative to dir, the directory of
// the configuration file, unless they are absolute.
func resolvePaths(c *Config, dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.TLS.CARoot)
	abs(&c.TLS.Storage)
	for i := range c.TLS.Certificates {
		abs(&c.TLS.Certificates[i].Cert)
		abs(&c.TLS.Certificates[i].Key)
	}
	switch c.Log.Access {
	case "stdout", "stderr", "off":
	default:
		abs(&c.Log.Access)
	}
}
