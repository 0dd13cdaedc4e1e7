package interop

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	sluicetls "github.com/sluice-proxy/sluice/tls"
)

// routeVariants are the routes to each peer server, by path suffix: /node,
// /node-idle, ... (prefix stripped), with their websocket settings.
var routeVariants = []struct{ suffix, websocket string }{
	{"", "{}"},
	{"-idle", "{idle_timeout: 300ms}"},
	{"-small", "{max_message_size: 1KiB}"},
	{"-ping", "{ping_interval: 250ms}"},
}

// routesYAML routes every variant of /KIND to the peer server of that kind.
func routesYAML(servers map[string]*peerServer) string {
	var b strings.Builder
	b.WriteString("routes:\n")
	for _, kind := range kinds {
		ps := servers[kind]
		if ps == nil {
			continue
		}
		for _, v := range routeVariants {
			fmt.Fprintf(&b, "  - {name: %s%s, path: /%s%s, strip_prefix: true, upstreams: [\"http://127.0.0.1:%d\"], websocket: %s}\n",
				kind, v.suffix, kind, v.suffix, ps.port, v.websocket)
		}
	}
	return b.String()
}

// plainYAML is a configuration without TLS, on a loopback port chosen by
// the system.
func plainYAML(servers map[string]*peerServer) string {
	return `
listen: {http: "127.0.0.1:0"}
admin: {listen: off}
log: {access: stdout, level: debug}
timeouts: {shutdown: 2s}
` + routesYAML(servers)
}

// scenario is one scripted exchange (see node_client.js) and what each end
// and sluice's access log must see of it.
type scenario struct {
	title    string // subtest name; default name
	name     string // the peers' scenario
	route    string // routeVariants suffix
	status   int    // handshake status the client sees; 0 means 101
	messages int    // messages the client sends
	dropped  bool   // the proxy does not forward them (max_message_size)
	protocol string // negotiated subprotocol
	ext      string // negotiated extension
	// The close codes the client and the server see; 0 means 1000 with the
	// reason "done" (the client closes after the echoes). The access log
	// has the same codes as client_close and backend_close, since each
	// peer answers a close with the code it got.
	clientSees, serverSees int
	reason                 string // the close reason both see, when a peer started the close
	closedBy               string // access log closed_by; "" means "client"
	cause                  string // access log reason
}

var scenarios = []scenario{
	{name: "echo", messages: 2},
	{name: "big", messages: 1},
	{name: "fragmented", messages: 1},
	{name: "subprotocol", messages: 1, protocol: "chat.v2"},
	{name: "deflate", messages: 2, ext: "permessage-deflate"},
	{name: "client-close", clientSees: 4000, serverSees: 4000, reason: "bye"},
	{name: "server-close", clientSees: 4001, serverSees: 4001, reason: "server bye", closedBy: "backend"},
	{name: "reject", status: 403},
	{title: "ping_interval", name: "ping", route: "-ping", messages: 2},
	{title: "idle_timeout", name: "wait", route: "-idle", clientSees: 1001, serverSees: 1001, closedBy: "proxy", cause: "idle_timeout"},
	{title: "max_message_size", name: "too-big", route: "-small", messages: 1, dropped: true,
		clientSees: 1009, serverSees: 1001, closedBy: "proxy", cause: "max_message_size"},
}

func (sc scenario) withDefaults() scenario {
	if sc.title == "" {
		sc.title = sc.name
	}
	if sc.status == 0 {
		sc.status = 101
	}
	if sc.clientSees == 0 {
		sc.clientSees, sc.serverSees, sc.reason = 1000, 1000, "done"
	}
	if sc.closedBy == "" {
		sc.closedBy = "client"
	}
	return sc
}

// exchange runs scenario sc from a client of kind client through sluice to
// the server ps, and checks it.
func exchange(t *testing.T, sl *sluice, base string, sc scenario, client string, ps *peerServer, env ...string) {
	t.Helper()
	id := strings.NewReplacer("/", "-", ">", "").Replace(t.Name())
	url := fmt.Sprintf("%s/%s%s/%s/%s", base, ps.kind, sc.route, sc.name, id)
	cr := runClient(t, client, sc.name, url, env...)
	se := ps.waitEvent(t, id)
	rec := sl.waitAccess(t, id)
	checkExchange(t, sc, client, ps.kind, cr, se, rec)
}

// TestWebSocketInterop runs every scenario through sluice for each pair of
// client and server implementations.
func TestWebSocketInterop(t *testing.T) {
	requirePeers(t)
	servers := map[string]*peerServer{}
	for _, kind := range kinds {
		servers[kind] = startPeerServer(t, kind)
	}
	sl := startSluice(t, plainYAML(servers))
	base := "ws://" + sl.srv.Addr("http")

	for _, client := range kinds {
		for _, srvKind := range kinds {
			t.Run(client+"->"+srvKind, func(t *testing.T) {
				for _, sc := range scenarios {
					sc := sc.withDefaults()
					t.Run(sc.title, func(t *testing.T) {
						exchange(t, sl, base, sc, client, servers[srvKind])
					})
				}
			})
		}
	}
}

// TestWebSocketInteropTLS runs sessions over wss: sluice terminates TLS with
// a certificate from its internal CA for localhost, and the clients trust
// only that CA's root.
func TestWebSocketInteropTLS(t *testing.T) {
	requirePeers(t)
	servers := map[string]*peerServer{"node": startPeerServer(t, "node")}
	storage := t.TempDir()
	sl := startSluice(t, fmt.Sprintf(`
listen: {http: off, https: "127.0.0.1:0"}
tls: {mode: internal, storage: %q}
admin: {listen: off}
log: {access: stdout, level: debug}
timeouts: {shutdown: 2s}
`, storage)+routesYAML(servers))
	root, err := sluicetls.RootCertificate(storage)
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(sl.srv.Addr("https"))
	if err != nil {
		t.Fatal(err)
	}
	base := "wss://localhost:" + port

	for _, client := range kinds {
		for _, sc := range scenarios {
			sc := sc.withDefaults()
			switch sc.name {
			case "echo", "big", "deflate", "client-close", "server-close":
			default:
				continue
			}
			t.Run(client+"/"+sc.title, func(t *testing.T) {
				exchange(t, sl, base, sc, client, servers["node"], "INTEROP_CA="+root)
			})
		}
	}
}

// TestWebSocketInteropShutdown shuts sluice down under an open session, a
// few times per pair of implementations: both ends get close 1001, and the
// session's access-log line is there once Shutdown has returned (the access
// log is closed then: a line written later is lost).
func TestWebSocketInteropShutdown(t *testing.T) {
	requirePeers(t)
	const rounds = 3
	servers := map[string]*peerServer{}
	for _, kind := range kinds {
		servers[kind] = startPeerServer(t, kind)
	}
	sc := scenario{name: "wait", clientSees: 1001, serverSees: 1001, closedBy: "proxy", cause: "shutdown"}.withDefaults()
	for _, client := range kinds {
		for _, srvKind := range kinds {
			t.Run(client+"->"+srvKind, func(t *testing.T) {
				for round := range rounds {
					sl := startSluice(t, plainYAML(servers))
					id := fmt.Sprintf("%s-%d", strings.NewReplacer("/", "-", ">", "").Replace(t.Name()), round)
					url := fmt.Sprintf("ws://%s/%s/%s/%s", sl.srv.Addr("http"), srvKind, sc.name, id)
					c := startClient(t, client, sc.name, url)
					c.waitOpen(t)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					err := sl.shutdown(ctx)
					cancel()
					if err != nil {
						t.Errorf("round %d: shutdown: %v", round, err)
					}
					rec, ok := sl.findAccess(t, id)
					cr := c.result(t)
					se := servers[srvKind].waitEvent(t, id)
					if !ok {
						t.Errorf("round %d: session %q has no access-log line once Shutdown has returned; the log:\n%s", round, id, sl.access)
						continue
					}
					checkExchange(t, sc, client, srvKind, cr, se, rec)
				}
			})
		}
	}
}

// checkExchange asserts on one scenario's outcome as the client, the server
// and sluice's access log saw it.
func checkExchange(t *testing.T, sc scenario, client, srvKind string, cr clientResult, se serverEvent, rec accessRecord) {
	t.Helper()
	if want := srvKind + sc.route; rec.Route != want {
		t.Errorf("access log: route %q, want %q", rec.Route, want)
	}
	if cr.Status != sc.status {
		t.Fatalf("client saw status %d, want %d", cr.Status, sc.status)
	}
	if sc.status != 101 {
		// The upstream refused the handshake: its answer is relayed.
		if cr.RefusedBy != srvKind {
			t.Errorf("client saw X-Refused-By %q, want %q (the upstream's headers relayed)", cr.RefusedBy, srvKind)
		}
		if want := "refused by " + srvKind + "\n"; cr.RefusedBody != nil && *cr.RefusedBody != want {
			t.Errorf("client saw body %q, want %q", *cr.RefusedBody, want)
		}
		if se.Rejected != sc.status {
			t.Errorf("server event %+v, want a %d refusal", se, sc.status)
		}
		if rec.Msg != "request" || rec.Status != sc.status {
			t.Errorf("access log: msg %q status %d, want a request line with %d", rec.Msg, rec.Status, sc.status)
		}
		return
	}
	if rec.Msg != "websocket" || rec.Status != 101 {
		t.Errorf("access log: msg %q status %d, want a websocket line with 101", rec.Msg, rec.Status)
	}
	if rec.Error != "" {
		t.Errorf("access log: error %q, want none", rec.Error)
	}

	// Messages: what the client sent is what the server got, and the echo
	// came back intact.
	if len(cr.Sent) != sc.messages {
		t.Errorf("client sent %d messages, want %d", len(cr.Sent), sc.messages)
	}
	forwarded := cr.Sent
	if sc.dropped {
		forwarded = nil
	}
	if !slices.Equal(se.Received, forwarded) {
		t.Errorf("server received %+v\nwant %+v", se.Received, forwarded)
	}
	if !slices.Equal(cr.Received, forwarded) {
		t.Errorf("client received %+v\nwant %+v", cr.Received, forwarded)
	}

	// Handshake negotiation.
	if cr.Protocol != sc.protocol || se.Protocol != sc.protocol {
		t.Errorf("subprotocol: client %q, server %q; want %q", cr.Protocol, se.Protocol, sc.protocol)
	}
	if sc.protocol != "" {
		if got := tokens(se.OfferedProtocols); !slices.Equal(got, []string{"chat.v1", "chat.v2"}) {
			t.Errorf("server saw offered subprotocols %q, want chat.v1, chat.v2", se.OfferedProtocols)
		}
	}
	if cr.Extensions != sc.ext || se.Extensions != sc.ext {
		t.Errorf("extensions: client %q, server %q; want %q", cr.Extensions, se.Extensions, sc.ext)
	}

	// Closing: codes and reasons seen by both ends and by sluice.
	if cr.CloseCode != sc.clientSees || (sc.closedBy != "proxy" && cr.CloseReason != sc.reason) {
		t.Errorf("client saw close %d %q, want %d %q", cr.CloseCode, cr.CloseReason, sc.clientSees, sc.reason)
	}
	if se.CloseCode != sc.serverSees || (sc.closedBy != "proxy" && se.CloseReason != sc.reason) {
		t.Errorf("server saw close %d %q, want %d %q", se.CloseCode, se.CloseReason, sc.serverSees, sc.reason)
	}
	if rec.ClientClose != sc.clientSees || rec.BackendClose != sc.serverSees || rec.ClosedBy != sc.closedBy || rec.Reason != sc.cause {
		t.Errorf("access log: client_close %d, backend_close %d, closed_by %q, reason %q; want %d, %d, %q, %q",
			rec.ClientClose, rec.BackendClose, rec.ClosedBy, rec.Reason, sc.clientSees, sc.serverSees, sc.closedBy, sc.cause)
	}

	// Pings: the proxy's reach the client and its pongs stop at the proxy;
	// nobody else pings.
	if se.PingsPongs != nil && *se.PingsPongs != 0 {
		t.Errorf("server got %d pings and pongs, want none", *se.PingsPongs)
	}
	if cr.Pings != nil && (*cr.Pings > 0) != (sc.name == "ping") {
		t.Errorf("client got %d pings", *cr.Pings)
	}

	// Frames: each message is one frame but for the fragmented one, which
	// must pass as the fragments it was sent in; plus one close frame each
	// way; plus, from the client, pongs to the proxy's pings.
	wantIn, wantOut := int64(sc.messages)+1, int64(len(forwarded))+1
	if sc.name == "fragmented" {
		wantIn, wantOut = peerKinds[client].fragments+1, peerKinds[srvKind].fragments+1
	}
	if sc.name == "ping" {
		if rec.FramesIn <= wantIn || rec.FramesOut != wantOut {
			t.Errorf("access log: frames_in %d, frames_out %d; want over %d (pongs), %d", rec.FramesIn, rec.FramesOut, wantIn, wantOut)
		}
	} else if rec.FramesIn != wantIn || rec.FramesOut != wantOut {
		t.Errorf("access log: frames_in %d, frames_out %d; want %d, %d", rec.FramesIn, rec.FramesOut, wantIn, wantOut)
	}

	// Bytes: with compression negotiated, the compressed frames pass as
	// they are, far smaller than the messages; without, at least the
	// payload passes.
	var payload, payloadOut int64
	for _, d := range cr.Sent {
		payload += int64(d.Len)
	}
	for _, d := range forwarded {
		payloadOut += int64(d.Len)
	}
	if sc.ext == "permessage-deflate" {
		if rec.BytesIn >= payload/2 || rec.BytesOut >= payload/2 {
			t.Errorf("access log: bytes_in %d, bytes_out %d for %d bytes of messages; want compressed frames (< half)", rec.BytesIn, rec.BytesOut, payload)
		}
	} else if rec.BytesIn < payload || rec.BytesOut < payloadOut {
		t.Errorf("access log: bytes_in %d, bytes_out %d; want at least %d and %d payload bytes", rec.BytesIn, rec.BytesOut, payload, payloadOut)
	}
}

// tokens splits a comma-separated header value.
func tokens(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
