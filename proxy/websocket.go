package proxy

import (
	"net/http"
	"strings"
	"sync"
)

// wsRoute counts a route's WebSocket sessions, in total and per client IP,
// to enforce max_connections and max_connections_per_ip. It is shared by
// every configuration that has a route of the same name, so a reload does not
// reset the counts of sessions that are still open.
type wsRoute struct {
	mu     sync.Mutex
	active int
	perIP  map[string]int
}

// acquire takes a slot for a session from ip, or reports false when a limit
// is reached. A limit of 0 means unlimited.
func (w *wsRoute) acquire(ip string, max, maxPerIP int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if max > 0 && w.active >= max {
		return false
	}
	if maxPerIP > 0 && w.perIP[ip] >= maxPerIP {
		return false
	}
	w.active++
	w.perIP[ip]++
	return true
}

func (w *wsRoute) release(ip string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active--
	if w.perIP[ip]--; w.perIP[ip] <= 0 {
		delete(w.perIP, ip)
	}
}

// originAllowed reports whether the request's Origin is one of allowed
// (already lower-case); an empty list allows any.
func originAllowed(r *http.Request, allowed []string) bool {
	if len(allowed) == 0 {
		return true
	}
	origin := strings.ToLower(r.Header.Get("Origin"))
	for _, a := range allowed {
		if origin == a {
			return true
		}
	}
	return false
}

// serveWebSocket checks a WebSocket upgrade against the route's policy and
// hands it to the upstream.
func (h *Handler) serveWebSocket(x *exchange, r *http.Request) {
	ws := &x.route.cfg.WebSocket
	switch {
	case !ws.Enabled:
		x.info.reason = "websocket_disabled"
		plainError(&x.rec, http.StatusForbidden, "websocket is not enabled on this route")
		return
	case !originAllowed(r, ws.Origins):
		x.info.reason = "origin_not_allowed"
		plainError(&x.rec, http.StatusForbidden, "origin not allowed")
		return
	}
	ip := clientIP(r.RemoteAddr)
	if !x.route.ws.acquire(ip, ws.MaxConnections, ws.MaxConnectionsPerIP) {
		x.info.reason = "websocket_connection_limit"
		x.rec.Header().Set("Retry-After", "1")
		plainError(&x.rec, http.StatusServiceUnavailable, "too many websocket connections")
		return
	}
	defer x.route.ws.release(ip)
	// Until the frame splicer is wired in, the ReverseProxy's own upgrade
	// handling relays the bytes.
	r = r.WithContext(withInfo(r.Context(), &x.info))
	x.route.rp.ServeHTTP(&x.rec, r)
}
