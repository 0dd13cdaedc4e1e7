package splice

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// testMask is the masking key of RFC 6455's examples (section 5.7).
var testMask = []byte{0x37, 0xfa, 0x21, 0x3d}

// Opcodes as bytes, for hand-made frames.
const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xa
)

// frame builds a frame by hand: the header byte by byte, the payload masked
// with mask when it is not nil. rsv is the three RSV bits (4 = RSV1).
func frame(fin bool, rsv, op byte, mask, payload []byte) []byte {
	b0 := rsv<<4 | op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0, 0}
	switch n := len(payload); {
	case n < 126:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[1] = 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask != nil {
		b[1] |= 0x80
		b = append(b, mask...)
	}
	start := len(b)
	b = append(b, payload...)
	for i := range payload {
		if mask != nil {
			b[start+i] ^= mask[i%4]
		}
	}
	return b
}

// cframe is a final, masked client frame; bframe a final, unmasked backend
// frame.
func cframe(op byte, payload []byte) []byte { return frame(true, 0, op, testMask, payload) }
func bframe(op byte, payload []byte) []byte { return frame(true, 0, op, nil, payload) }

func closeBody(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// payloadOf returns n bytes of recognisable payload.
func payloadOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// transport makes a connected pair: a is the test's end, b the session's.
type transport func(tb testing.TB) (a, b net.Conn)

// tcpPair connects two ends over loopback TCP.
func tcpPair(tb testing.TB) (a, b net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	b, err = ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	return a, b
}

// pipePair connects two ends with net.Pipe: every Write arrives as a Read of
// its own, which splits headers deterministically, and the session uses
// blocking reads.
func pipePair(tb testing.TB) (a, b net.Conn) { return net.Pipe() }

// rig is a session between two test peers.
type rig struct {
	client  net.Conn // the test's client end
	backend net.Conn // the test's backend end
	s       *Session
	done    chan Stats
	cancel  context.CancelFunc
}

type rigConfig struct {
	opt                             Options
	clientBuffered, backendBuffered []byte
	pair                            transport     // default tcpPair
	clientPair                      transport     // overrides pair for the client side
	noRun                           bool          // the test calls run itself
	quiet                           time.Duration // the session's quiet period; 0 = -splice.quiet, else quietPeriod
	hybrid                          bool          // never inline: goroutines drive the directions (also forceHybrid)
}

// forceHybrid makes every rig's session run without the inline driver, for
// TestHybridDriver, which runs the other tests again that way.
var forceHybrid bool

// testQuiet shortens the quiet period of every rig's session: with a few
// milliseconds, directions park and wake all through the tests, which then
// check the hybrid driver's transitions against everything else.
var testQuiet = flag.Duration("splice.quiet", 0, "quiet period of the tests' sessions (0 = quietPeriod)")

// newRig starts a session and registers its end: test conns closed, Run
// returned, and the goroutine count back where it was.
func newRig(t *testing.T, cfg rigConfig) *rig {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, base) })
	pair := cfg.pair
	if pair == nil {
		pair = tcpPair
	}
	cpair := cfg.clientPair
	if cpair == nil {
		cpair = pair
	}
	c, pc := cpair(t)
	b, pb := pair(t)
	deadline := time.Now().Add(20 * time.Second)
	c.SetDeadline(deadline)
	b.SetDeadline(deadline)
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{client: c, backend: b, done: make(chan Stats, 2), cancel: cancel}
	r.s = New(pc, cfg.clientBuffered, pb, cfg.backendBuffered, cfg.opt)
	if q := cmp.Or(cfg.quiet, *testQuiet); q > 0 {
		r.s.quiet = q
	}
	if cfg.hybrid || forceHybrid {
		r.s.inline = false
	}
	t.Cleanup(func() {
		c.Close()
		b.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after both peers closed")
		}
		cancel()
	})
	if !cfg.noRun {
		r.run(ctx)
	}
	return r
}

func (r *rig) run(ctx context.Context) {
	go func() {
		st := r.s.Run(ctx)
		r.done <- st
		r.done <- st
	}()
}

func (r *rig) running() bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return r.s.running
}

// stats waits for Run to return.
func (r *rig) stats(t *testing.T) Stats {
	t.Helper()
	select {
	case st := <-r.done:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return Stats{}
	}
}

func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}

// readN reads exactly n bytes.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// expectBytes reads len(want) bytes and compares them.
func expectBytes(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got := readN(t, c, len(want))
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x\nwant % x", trunc(got), trunc(want))
	}
}

func trunc(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// rframe is a frame as a test peer reads it, payload unmasked.
type rframe struct {
	fin     bool
	rsv     byte
	op      byte
	masked  bool
	payload []byte
}

// readFrame reads one frame from c (hand-decoded, payloads up to 1 MiB).
func readFrame(t *testing.T, c net.Conn) rframe {
	t.Helper()
	f, err := tryReadFrame(c)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

func tryReadFrame(c io.Reader) (rframe, error) {
	var h [2]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return rframe{}, err
	}
	f := rframe{fin: h[0]&0x80 != 0, rsv: h[0] >> 4 & 7, op: h[0] & 0xf, masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c, e[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c, e[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > 1<<20 {
		return f, errors.New("test frame too long")
	}
	var mask [4]byte
	if f.masked {
		if _, err := io.ReadFull(c, mask[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(c, f.payload); err != nil {
		return f, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= mask[i%4]
		}
	}
	return f, nil
}

// expectClose reads frames until a close frame, skipping pings when
// skipPings, and checks its code and whether it was masked.
func expectClose(t *testing.T, c net.Conn, code int, masked, skipPings bool) rframe {
	t.Helper()
	for {
		f := readFrame(t, c)
		if skipPings && f.op == opPing {
			continue
		}
		if f.op != opClose {
			t.Fatalf("got opcode %#x (payload %q), want close %d", f.op, trunc(f.payload), code)
		}
		if len(f.payload) < 2 {
			t.Fatalf("close frame without a code, want %d", code)
		}
		if got := int(binary.BigEndian.Uint16(f.payload)); got != code {
			t.Fatalf("close code %d (%q), want %d", got, f.payload[2:], code)
		}
		if f.masked != masked {
			t.Fatalf("close frame masked=%v, want %v", f.masked, masked)
		}
		return f
	}
}

// expectEOF reads until the session closes c; nothing may arrive first.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	var b [64]byte
	n, err := c.Read(b[:])
	if n > 0 {
		t.Fatalf("got % x, want EOF", b[:n])
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want EOF", err)
	}
}

// answerClose sends the close frame a well-behaved peer answers with.
func answerClose(t *testing.T, c net.Conn, fromClient bool) {
	t.Helper()
	f := bframe(opClose, closeBody(1000, ""))
	if fromClient {
		f = cframe(opClose, closeBody(1000, ""))
	}
	if _, err := c.Write(f); err != nil {
		t.Fatalf("answering close: %v", err)
	}
}

// write writes b from a test peer, in chunks of at most chunk bytes when
// chunk > 0.
func write(t *testing.T, c net.Conn, b []byte, chunk int) {
	t.Helper()
	if chunk <= 0 {
		chunk = len(b)
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := c.Write(b[:n]); err != nil {
			t.Fatalf("writing: %v", err)
		}
		b = b[n:]
	}
}

// writeAsync writes b from a test peer in its own goroutine, for writes that
// may block until the other side reads (net.Pipe, big payloads).
func writeAsync(t *testing.T, c net.Conn, b []byte, chunk int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		if chunk <= 0 {
			chunk = len(b)
		}
		for len(b) > 0 {
			n := min(chunk, len(b))
			if _, err := c.Write(b[:n]); err != nil {
				errc <- err
				return
			}
			b = b[n:]
		}
		errc <- nil
	}()
	return errc
}
