package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
	"github.com/sluice-proxy/sluice/server"
)

// python is Debian's interpreter, the one python3-websockets installs for;
// the python3 on PATH may be another one without it.
const python = "/usr/bin/python3"

// Bounds on every wait; a healthy exchange takes well under a second.
const (
	startTimeout  = 15 * time.Second // a peer server printing "listening PORT"
	clientTimeout = 30 * time.Second // a whole client run, then it is killed
	eventTimeout  = 10 * time.Second // a line from a server or in the access log, once the client is done
	// maxClientRun flags sessions that end slowly: after the close
	// handshake both libraries wait for the TCP connection to end
	// (websockets up to its close_timeout of 10 s, ws up to 30 s), so a
	// proxy that does not pass the end on makes a client run last that
	// long.
	maxClientRun = 8 * time.Second
)

// peerKind is one third-party implementation, as a server and as a client.
type peerKind struct {
	server, client []string // command lines; the client takes SCENARIO URL
	// fragments is how many frames the implementation sends for the
	// three-fragment message of the "fragmented" scenario: websockets ends a
	// fragmented message with an empty final frame.
	fragments int64
}

var peerKinds = map[string]peerKind{
	"node": {server: []string{"node", "node_server.js"}, client: []string{"node", "node_client.js"}, fragments: 3},
	"py":   {server: []string{python, "py_server.py"}, client: []string{python, "py_client.py"}, fragments: 4},
}

// kinds lists the peer kinds in a fixed order.
var kinds = []string{"node", "py"}

var (
	peersOnce    sync.Once
	peersMissing []string
	peerVersions string // "ws X, websockets Y"
)

// requirePeers skips the test when the third-party peers are not installed,
// or fails it under CI=true, where they must be.
func requirePeers(t *testing.T) {
	t.Helper()
	peersOnce.Do(func() {
		var wsVersion, pyVersion string
		if _, err := exec.LookPath("node"); err != nil {
			peersMissing = append(peersMissing, "node is not on PATH")
		}
		if b, err := os.ReadFile("node_modules/ws/package.json"); err != nil {
			peersMissing = append(peersMissing, "interop/node_modules/ws is missing (run `npm ci` in interop/)")
		} else {
			var pkg struct{ Version string }
			json.Unmarshal(b, &pkg)
			wsVersion = pkg.Version
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, python, "-c", "import websockets; print(websockets.__version__)").CombinedOutput()
		if err != nil {
			peersMissing = append(peersMissing, fmt.Sprintf("%s cannot import websockets (apt-get install python3-websockets): %v: %s",
				python, err, bytes.TrimSpace(out)))
		} else {
			pyVersion = string(bytes.TrimSpace(out))
		}
		peerVersions = fmt.Sprintf("ws %s, websockets %s", wsVersion, pyVersion)
	})
	if len(peersMissing) == 0 {
		t.Logf("peers: %s", peerVersions)
		return
	}
	msg := strings.Join(peersMissing, "; ")
	if os.Getenv("CI") == "true" {
		t.Fatalf("WebSocket interop peers missing under CI=true: %s", msg)
	}
	t.Skipf("WebSocket interop peers missing: %s", msg)
}

// notifyBuffer is a goroutine-safe buffer that signals every write.
type notifyBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // holds a token after a write
}

func newNotifyBuffer() *notifyBuffer {
	return &notifyBuffer{changed: make(chan struct{}, 1)}
}

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (b *notifyBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// digest describes one message: its type ("text" or "binary"), length and
// SHA-256.
type digest struct {
	Type   string `json:"type"`
	Len    int    `json:"len"`
	SHA256 string `json:"sha256"`
}

// serverEvent is what a peer server prints when a connection ends.
type serverEvent struct {
	ID               string   `json:"id"`
	Scenario         string   `json:"scenario"`
	Rejected         int      `json:"rejected"`
	OfferedProtocols string   `json:"offered_protocols"`
	Protocol         string   `json:"protocol"`
	Extensions       string   `json:"extensions"`
	Received         []digest `json:"received"`
	PingsPongs       *int     `json:"pings_pongs"` // nil: the library does not tell
	CloseCode        int      `json:"close_code"`
	CloseReason      string   `json:"close_reason"`
}

// peerServer is a running peer server process.
type peerServer struct {
	kind   string
	port   int
	stderr *notifyBuffer

	mu     sync.Mutex
	events map[string]chan serverEvent // by connection id
	other  []string                    // lines that were not events
}

// startPeerServer starts the named kind's server and waits until it
// listens. The process is killed when the test ends.
func startPeerServer(t *testing.T, kind string) *peerServer {
	t.Helper()
	argv := peerKinds[kind].server
	ps := &peerServer{kind: kind, stderr: newNotifyBuffer(), events: map[string]chan serverEvent{}}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = ps.stderr
	cmd.WaitDelay = 5 * time.Second
	// The server also exits when its stdin closes, so it cannot outlive a
	// test binary that dies without running cleanups.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the %s server: %v", kind, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			ps.mu.Lock()
			t.Logf("%s server: other output: %q; stderr:\n%s", kind, ps.other, ps.stderr)
			ps.mu.Unlock()
		}
	})

	ready := make(chan int, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			ps.line(sc.Text(), ready)
		}
		io.Copy(io.Discard, stdout)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case ps.port = <-ready:
	case <-done:
		t.Fatalf("the %s server exited before listening; stderr:\n%s", kind, ps.stderr)
	case <-timer.C:
		t.Fatalf("the %s server did not print \"listening PORT\" within %v; stderr:\n%s", kind, startTimeout, ps.stderr)
	}
	return ps
}

// line handles one line of the server's output.
func (ps *peerServer) line(s string, ready chan<- int) {
	if p, ok := strings.CutPrefix(s, "listening "); ok {
		if port, err := strconv.Atoi(p); err == nil {
			ready <- port
			return
		}
	}
	var ev serverEvent
	if err := json.Unmarshal([]byte(s), &ev); err != nil || ev.ID == "" {
		ps.mu.Lock()
		ps.other = append(ps.other, s)
		ps.mu.Unlock()
		return
	}
	select {
	case ps.event(ev.ID) <- ev:
	default: // a second connection with the same id; the test sees the first
		ps.mu.Lock()
		ps.other = append(ps.other, s)
		ps.mu.Unlock()
	}
}

// event returns the channel that delivers the event of connection id.
func (ps *peerServer) event(id string) chan serverEvent {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ch := ps.events[id]
	if ch == nil {
		ch = make(chan serverEvent, 1)
		ps.events[id] = ch
	}
	return ch
}

// waitEvent returns what the server saw of connection id.
func (ps *peerServer) waitEvent(t *testing.T, id string) serverEvent {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	select {
	case ev := <-ps.event(id):
		return ev
	case <-timer.C:
		t.Fatalf("the %s server reported nothing for %q within %v; stderr:\n%s", ps.kind, id, eventTimeout, ps.stderr)
		return serverEvent{}
	}
}

// clientResult is what a peer client prints after its exchange.
type clientResult struct {
	Scenario    string   `json:"scenario"`
	Error       string   `json:"error"`
	Open        bool     `json:"open"` // the line a "wait" client prints once open
	Status      int      `json:"status"`
	Protocol    string   `json:"protocol"`
	Extensions  string   `json:"extensions"`
	Sent        []digest `json:"sent"`
	Received    []digest `json:"received"`
	Pings       *int     `json:"pings"` // nil: the library does not tell
	CloseCode   int      `json:"close_code"`
	CloseReason string   `json:"close_reason"`
	RefusedBy   string   `json:"refused_by"`
	RefusedBody *string  `json:"refused_body"` // only ws reads the body of a refusal
}

// clientRun is a running peer client process.
type clientRun struct {
	kind, scenario, url string
	cmd                 *exec.Cmd
	cancel              context.CancelFunc
	lines               chan string // stdout, line by line; closed at its end
	stderr              *notifyBuffer
	start               time.Time
	waitOnce            sync.Once
	waitErr             error
}

// startClient starts the named kind's client for one scenario against url.
// It is killed after clientTimeout, or when the test ends.
func startClient(t *testing.T, kind, scenario, url string, env ...string) *clientRun {
	t.Helper()
	argv := peerKinds[kind].client
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	c := &clientRun{kind: kind, scenario: scenario, url: url, cancel: cancel,
		lines: make(chan string, 16), stderr: newNotifyBuffer()}
	c.cmd = exec.CommandContext(ctx, argv[0], append(argv[1:], scenario, url)...)
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stderr = c.stderr
	c.cmd.WaitDelay = 2 * time.Second
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c.start = time.Now()
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting the %s client: %v", kind, err)
	}
	t.Cleanup(func() {
		cancel()
		c.wait()
	})
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		io.Copy(io.Discard, stdout)
	}()
	return c
}

// wait waits for the process, once; its lines must have been read.
func (c *clientRun) wait() error {
	c.waitOnce.Do(func() {
		for range c.lines {
		}
		c.waitErr = c.cmd.Wait()
		c.cancel()
	})
	return c.waitErr
}

// waitOpen waits for a "wait" client to say its session is open.
func (c *clientRun) waitOpen(t *testing.T) {
	t.Helper()
	for line := range c.lines {
		var r clientResult
		if json.Unmarshal([]byte(line), &r) == nil && r.Open {
			return
		}
		if r.Error != "" {
			break
		}
	}
	err := c.wait()
	t.Fatalf("%s client %s %s ended before its session was open: %v\nstderr: %s", c.kind, c.scenario, c.url, err, c.stderr)
}

// result waits for the client to finish and returns what it printed last.
func (c *clientRun) result(t *testing.T) clientResult {
	t.Helper()
	var last string
	for line := range c.lines {
		last = line
	}
	err := c.wait()
	took := time.Since(c.start)
	var r clientResult
	if jerr := json.Unmarshal([]byte(last), &r); jerr != nil || err != nil || r.Error != "" {
		t.Fatalf("%s client %s %s: %v (after %v)\nresult: %s\nlast line: %s\nstderr: %s",
			c.kind, c.scenario, c.url, err, took.Round(time.Millisecond), r.Error, last, c.stderr)
	}
	if took > maxClientRun {
		t.Errorf("%s client %s took %v (over %v): the session did not end promptly", c.kind, c.scenario, took.Round(time.Millisecond), maxClientRun)
	}
	return r
}

// runClient runs the named kind's client for one scenario against url and
// returns its result.
func runClient(t *testing.T, kind, scenario, url string, env ...string) clientResult {
	t.Helper()
	return startClient(t, kind, scenario, url, env...).result(t)
}

// accessRecord is one line of sluice's JSON access log.
type accessRecord struct {
	Msg          string `json:"msg"`
	Path         string `json:"path"`
	Status       int    `json:"status"`
	Route        string `json:"route"`
	FramesIn     int64  `json:"frames_in"`
	FramesOut    int64  `json:"frames_out"`
	BytesIn      int64  `json:"bytes_in"`
	BytesOut     int64  `json:"bytes_out"`
	ClientClose  int    `json:"client_close"`
	BackendClose int    `json:"backend_close"`
	ClosedBy     string `json:"closed_by"`
	Reason       string `json:"reason"`
	Error        string `json:"error"`
}

// sluice is an in-process sluice server and its logs.
type sluice struct {
	srv        *server.Server
	access     *notifyBuffer // log.access: stdout
	processLog *notifyBuffer
	stopOnce   sync.Once
	stopErr    error
}

// startSluice serves yaml with the real loader and server packages. It is
// shut down when the test ends, if the test did not do it.
func startSluice(t *testing.T, yaml string) *sluice {
	t.Helper()
	cfg, err := config.Parse("interop.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	s := &sluice{access: newNotifyBuffer(), processLog: newNotifyBuffer()}
	logger := slog.New(slog.NewTextHandler(s.processLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s.srv, err = server.New(cfg, server.Options{Logger: logger, Stdout: s.access})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.shutdown(ctx); err != nil {
			t.Errorf("sluice shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("sluice log:\n%s\naccess log:\n%s", s.processLog, s.access)
		}
	})
	return s
}

// shutdown shuts the server down gracefully, once.
func (s *sluice) shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.srv.Shutdown(ctx) })
	return s.stopErr
}

// waitAccess returns the access record whose path ends in "/"+id, waiting
// for it: sluice writes a session's line when the session has ended, which
// may be after the client process has exited.
func (s *sluice) waitAccess(t *testing.T, id string) accessRecord {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	for {
		if rec, ok := s.findAccess(t, id); ok {
			return rec
		}
		select {
		case <-s.access.changed:
		case <-timer.C:
			t.Fatalf("no access-log line for %q within %v; the log:\n%s", id, eventTimeout, s.access)
		}
	}
}

// findAccess returns the access record whose path ends in "/"+id, if it has
// been written.
func (s *sluice) findAccess(t *testing.T, id string) (accessRecord, bool) {
	t.Helper()
	for line := range strings.Lines(s.access.String()) {
		var rec accessRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("access log line is not JSON: %v: %q", err, line)
		}
		if strings.HasSuffix(rec.Path, "/"+id) {
			return rec, true
		}
	}
	return accessRecord{}, false
}
