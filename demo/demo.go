// Package demo runs the backends of `sluice demo`: a REST echo that answers
// with the request it saw as JSON, a WebSocket echo, and a Server-Sent-Events
// ticker, each on its own loopback port, plus the configuration that puts
// sluice in front of them.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Backends are the running demo backends.
type Backends struct {
	Echo, WebSocket, Events string // base URLs, http://127.0.0.1:PORT

	servers []*http.Server
	wg      sync.WaitGroup
	ctx     context.Context // ends WebSocket sessions and event streams on Close
	cancel  context.CancelFunc
}

// Start starts the three backends on loopback ports chosen by the system.
func Start(logger *slog.Logger) (*Backends, error) {
	ctx, cancel := context.WithCancel(context.Background())
	b := &Backends{ctx: ctx, cancel: cancel}
	for _, s := range []struct {
		url *string
		h   http.Handler
	}{
		{&b.Echo, http.HandlerFunc(serveEcho)},
		{&b.WebSocket, http.HandlerFunc(b.serveWebSocket)},
		{&b.Events, http.HandlerFunc(b.serveEvents)},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("starting demo backend: %w", err)
		}
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
		b.servers = append(b.servers, srv)
		*s.url = "http://" + ln.Addr().String()
		b.wg.Go(func() { srv.Serve(ln) })
	}
	return b, nil
}

// Close stops the backends and waits for them.
func (b *Backends) Close() {
	b.cancel()
	for _, s := range b.servers {
		s.Close()
	}
	b.wg.Wait()
}

// Echoed is what the REST echo answers: the request as the backend saw it.
type Echoed struct {
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query,omitempty"`
	Host       string              `json:"host"`
	RemoteAddr string              `json:"remote_addr"`
	Headers    map[string][]string `json:"headers"`
	Body       string              `json:"body,omitempty"`
	BodyBytes  int64               `json:"body_bytes"`
}

// serveEcho answers with the request it saw, as JSON; GET / without a
// JSON Accept header gets the demo page instead.
func serveEcho(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/" && acceptsHTML(r) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
		return
	}
	// Echo at most 64 KiB of the body; count the rest.
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	rest, _ := io.Copy(io.Discard, r.Body)
	e := Echoed{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host,
		RemoteAddr: r.RemoteAddr, Headers: r.Header, Body: string(body),
		BodyBytes: int64(len(body)) + rest,
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(e)
}

func acceptsHTML(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if len(v) >= 9 && v[:9] == "text/html" {
			return true
		}
	}
	return false
}

// serveWebSocket echoes every message back, text as text, binary as binary.
func (b *Backends) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	conn, _, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return // UpgradeHTTP has answered the bad request
	}
	defer conn.Close()
	stop := context.AfterFunc(b.ctx, func() {
		wsutil.WriteServerMessage(conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusGoingAway, "demo stopping"))
		conn.Close()
	})
	defer stop()
	for {
		msg, op, err := wsutil.ReadClientData(conn)
		if err != nil {
			return
		}
		if err := wsutil.WriteServerMessage(conn, op, msg); err != nil {
			return
		}
	}
}

// serveEvents sends one event a second until the client leaves.
func (b *Backends) serveEvents(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 1; ; n++ {
		if _, err := fmt.Fprintf(w, "id: %d\nevent: tick\ndata: {\"n\": %d, \"time\": %q}\n\n", n, n, time.Now().UTC().Format(time.RFC3339)); err != nil {
			return
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-b.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Config returns the YAML configuration of the demo: sluice on httpsAddr
// with the internal CA (and httpAddr redirecting to it), admin on
// adminAddr, certificates kept in storage.
func (b *Backends) Config(httpAddr, httpsAddr, adminAddr, storage string) string {
	return fmt.Sprintf(`# sluice demo configuration (written by "sluice demo")
listen:
  http: %q
  https: %q
tls:
  mode: internal          # a local CA, created once in storage
  storage: %q
admin:
  listen: %q
log:
  access: stdout
routes:
  - name: rest-echo
    path: /api            # matches /api and /api/..., not /apix
    upstreams: [%s]
  - name: websocket-echo
    path: /ws
    upstreams: [%s]
    websocket:
      messages_per_second: 100
      message_burst: 200
      max_message_size: 1MiB
      idle_timeout: 5m
  - name: events
    path: /events
    upstreams: [%s]
  - name: home
    path: /
    upstreams: [%s]
`, httpAddr, httpsAddr, storage, adminAddr, b.Echo, b.WebSocket, b.Events, b.Echo)
}

// page is the demo's home page: it tries the three backends from the
// browser.
const page = `<!doctype html>
<meta charset="utf-8">
<title>sluice demo</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}pre{background:#f4f4f4;padding:.6em;overflow:auto}</style>
<h1>sluice demo</h1>
<p>This page came through sluice from the demo's echo backend.</p>
<h2>REST</h2>
<p><a href="/api/hello?x=1">/api/hello?x=1</a> returns the request the backend saw.</p>
<h2>WebSocket <small>/ws</small></h2>
<input id="msg" value="hello through sluice"> <button id="send">send</button>
<pre id="wslog"></pre>
<h2>Server-Sent Events <small>/events</small></h2>
<pre id="sselog"></pre>
<script>
const wslog = document.getElementById('wslog'), sselog = document.getElementById('sselog');
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
ws.onopen = () => wslog.textContent += 'connected\n';
ws.onmessage = e => wslog.textContent += 'echo: ' + e.data + '\n';
ws.onclose = e => wslog.textContent += 'closed ' + e.code + ' ' + e.reason + '\n';
document.getElementById('send').onclick = () => ws.send(document.getElementById('msg').value);
const es = new EventSource('/events');
es.addEventListener('tick', e => { sselog.textContent = e.data + '\n' + sselog.textContent.split('\n').slice(0, 4).join('\n'); });
</script>
`
