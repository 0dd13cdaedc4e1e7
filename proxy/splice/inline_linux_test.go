//go:build linux

package splice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestHybridDriver runs the behaviour tests again with the goroutine driver
// that TLS and throttled sessions use: the plain sockets of the rigs would
// otherwise run inline.
func TestHybridDriver(t *testing.T) {
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"PassThrough", TestPassThrough},
		{"BufferedBytesGoFirst", TestBufferedBytesGoFirst},
		{"ClientProtocolErrors", TestClientProtocolErrors},
		{"BackendProtocolErrors", TestBackendProtocolErrors},
		{"MaxMessageSize", TestMaxMessageSize},
		{"RateLimitClose", TestRateLimitClose},
		{"IdleTimeout", TestIdleTimeout},
		{"Ping", TestPing},
		{"PeerGone", TestPeerGone},
		{"Shutdown", TestShutdown},
		{"MidFrameInjection", TestMidFrameInjection},
		{"HeaderSplitEverywhere", TestHeaderSplitEverywhere},
		{"PingDueMidFrameDoesNotSpin", TestPingDueMidFrameDoesNotSpin},
		{"TimersWhileParked", TestTimersWhileParked},
		{"CancelWhileParked", TestCancelWhileParked},
		{"SlowPeer", TestSlowPeer},
		{"GobwasPeers", TestGobwasPeers},
	}
	forceHybrid = true
	defer func() { forceHybrid = false }()
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

// TestInlineChoice checks which sessions run inline: plain sockets both
// sides, with no limit that can make a direction wait.
func TestInlineChoice(t *testing.T) {
	tests := []struct {
		name string
		cfg  rigConfig
		want bool
	}{
		{"tcp", rigConfig{}, true},
		{"unix", rigConfig{pair: unixPair}, true},
		{"limits that close", rigConfig{opt: Options{MessagesPerSecond: 5, CloseOnLimit: true}}, true},
		{"limits that throttle", rigConfig{opt: Options{MessagesPerSecond: 5}}, false},
		{"net.Pipe", rigConfig{pair: pipePair}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.cfg)
			if r.s.inline != tt.want {
				t.Errorf("inline = %v, want %v", r.s.inline, tt.want)
			}
			if got := WouldInline(r.s.client.conn, tt.cfg.opt); got != tt.want {
				t.Errorf("WouldInline = %v, want %v", got, tt.want)
			}
			echo(t, r, 0)
			if st := shutdownRig(t, r); st.Reason != "shutdown" || st.FramesIn != 2 || st.FramesOut != 2 { // a message and a close each way
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// TestInlineNoGoroutines checks that inline sessions hold no goroutine of
// their own, busy or idle: the pollers' goroutines serve them all, and end
// with the last session.
func TestInlineNoGoroutines(t *testing.T) {
	const n = 64
	base := runtime.NumGoroutine()
	type end struct{ client, backend io.ReadWriteCloser }
	ends := make([]end, n)
	done := make(chan Stats, n)
	for i := range ends {
		c, pc := tcpPair(t)
		b, pb := tcpPair(t)
		ends[i] = end{c, b}
		s := New(pc, nil, pb, nil, Options{})
		if !s.inline {
			t.Fatal("a session between two TCP sockets is not inline")
		}
		s.Start(context.Background(), func(st Stats) { done <- st })
	}
	for i, e := range ends {
		in := cframe(opText, []byte("ping"))
		if _, err := e.client.Write(in); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(in))
		if _, err := io.ReadFull(e.backend, got); err != nil || !bytes.Equal(got, in) {
			t.Fatalf("session %d: got % x, %v", i, got, err)
		}
	}
	if g := runtime.NumGoroutine() - base; g > len(pollers.all) {
		t.Errorf("%d sessions hold %d goroutines, want <= %d (one per poller)", n, g, len(pollers.all))
	}
	for _, e := range ends {
		e.client.Close()
		e.backend.Close()
	}
	for range n {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("sessions did not end after their peers closed")
		}
	}
	checkGoroutines(t, base)
}

// TestSlowPeer checks backpressure when a backend reads slower than
// its client writes: the proxy stops reading from the client (TCP holds the
// rest back), keeps serving the other direction, and when the backend reads
// again every byte arrives in order; a close frame that waited behind them
// completes the close handshake.
func TestSlowPeer(t *testing.T) {
	r := newRig(t, rigConfig{})
	frame := cframe(opBinary, payloadOf(64<<10))
	const frames = 256 // 16 MiB: more than the sockets between the peers hold
	stream := bytes.Repeat(frame, frames)
	closeFrame := cframe(opClose, []byte{0x03, 0xe8})
	werr := writeAsync(t, r.client, cat(stream, closeFrame), 0)

	// While the backend does not read, the client's writer stalls. An
	// inline direction waits for its destination's pending bytes to drain;
	// the hybrid driver waits in a write.
	if r.s.inline {
		deadline := time.Now().Add(10 * time.Second)
		for r.s.c2b.ev.Load() != evWaiting {
			if time.Now().After(deadline) {
				t.Fatalf("client-to-backend state %d, want %d (waiting)", r.s.c2b.ev.Load(), evWaiting)
			}
			time.Sleep(time.Millisecond) // polling, bounded by the deadline
		}
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-werr:
		t.Fatalf("client wrote 16 MiB to a backend that does not read (err %v)", err)
	default:
	}
	if got := r.s.c2b.bytes.Load(); got >= int64(len(stream)) {
		t.Errorf("proxy read %d bytes from the client, want fewer than %d", got, len(stream))
	}
	// The other direction still works.
	out := bframe(opText, []byte("meanwhile"))
	write(t, r.backend, out, 0)
	expectBytes(t, r.client, out)

	// The backend reads it all; it arrives whole and in order.
	h := sha256.New()
	if _, err := io.CopyN(h, r.backend, int64(len(stream))); err != nil {
		t.Fatalf("backend reading: %v", err)
	}
	if got, want := h.Sum(nil), sha256.Sum256(stream); !bytes.Equal(got, want[:]) {
		t.Errorf("the backend got different bytes than the client sent")
	}
	if err := <-werr; err != nil {
		t.Fatalf("client writing: %v", err)
	}
	expectBytes(t, r.backend, closeFrame)
	answerClose(t, r.backend, false)
	expectClose(t, r.client, 1000, false, false)
	expectEOF(t, r.client)
	expectEOF(t, r.backend)
	st := r.stats(t)
	if st.ClosedBy != "client" || st.Reason != "" || st.Err != nil || st.FramesIn != frames+1 {
		t.Errorf("stats: %+v", st)
	}
}

// TestInlineReportDuringStart checks reports that come while a session's
// directions are being registered: the client has written and half-closed
// before the session starts, so the first report carries the hang-up, and
// the start is held open until the poller has seen it. The session must see
// the client's end and finish without waiting for a timer. (Such a report
// used to lose its hang-up: the session then waited for ever.)
func TestInlineReportDuringStart(t *testing.T) {
	testHookRegistered = func() { time.Sleep(5 * time.Millisecond) }
	defer func() { testHookRegistered = nil }()
	for _, in := range [][]byte{
		nil,
		{0x81},
		{0x81, 0xd6, 0x41, 0x3d}, // a header cut short
		cframe(opText, []byte("whole")),
	} {
		c, pc := unixPair(t)
		b, pb := unixPair(t)
		backend := backendPeer(b)
		c.Write(in)
		c.(*net.UnixConn).CloseWrite()
		s := New(pc, nil, pb, nil, Options{})
		done := make(chan Stats, 1)
		s.Start(context.Background(), func(st Stats) { done <- st })
		select {
		case st := <-done:
			if st.Reason != "client_gone" {
				t.Errorf("input % x: stats %+v", in, st)
			}
		case <-time.After(closeGrace / 2):
			t.Errorf("input % x: the session did not end after its client's end", in)
			c.Close()
			b.Close()
			<-done
		}
		c.Close()
		b.Close()
		<-backend
	}
}

// TestInlineEndBehindBytes checks sources whose FIN comes in the same
// report as their last bytes: serve then ends the direction at the first
// read that does not fill its buffer, without the read that would only
// find the end. Every byte sent before the FIN must still arrive, however
// the stream's length falls against the read buffer, and the session must
// end as it does for any peer that goes away.
func TestInlineEndBehindBytes(t *testing.T) {
	for _, size := range []int{6, 200, bufSize - 1, bufSize, bufSize + 1, 3*bufSize + 17} {
		for _, fromClient := range []bool{false, true} {
			name := fmt.Sprintf("backend %d bytes", size)
			if fromClient {
				name = fmt.Sprintf("client %d bytes", size)
			}
			t.Run(name, func(t *testing.T) {
				r := newRig(t, rigConfig{noRun: true})
				src, dst, stream := r.backend, r.client, frameOfLen(t, size, false)
				if fromClient {
					src, dst, stream = r.client, r.backend, frameOfLen(t, size, true)
				}
				// Small streams are in the socket with their FIN before the
				// session starts, so its first report carries both; a long
				// one needs the session to read while it is written.
				got := make(chan []byte, 1)
				go func() {
					b := make([]byte, len(stream))
					n, _ := io.ReadFull(dst, b)
					got <- b[:n]
				}()
				errc := writeAsync(t, src, stream, 0)
				started := false
				select {
				case err := <-errc:
					if err != nil {
						t.Fatalf("writing the stream: %v", err)
					}
				case <-time.After(100 * time.Millisecond):
					r.run(context.Background())
					started = true
					if err := <-errc; err != nil {
						t.Fatalf("writing the stream: %v", err)
					}
				}
				src.(*net.TCPConn).CloseWrite()
				if !started {
					r.run(context.Background())
				}
				if b := <-got; !bytes.Equal(b, stream) {
					t.Fatalf("%d of %d bytes arrived, or not as sent", len(b), len(stream))
				}
				code, gone := 1014, "backend_gone"
				if fromClient {
					code, gone = 1001, "client_gone"
				}
				expectClose(t, dst, code, fromClient, false)
				answerClose(t, dst, !fromClient)
				expectEOF(t, dst)
				if st := r.stats(t); st.Reason != gone || st.Err != nil {
					t.Errorf("stats: %+v", st)
				}
			})
		}
	}
}

// frameOfLen returns one binary frame of exactly n bytes, header included,
// masked when from the client.
func frameOfLen(t *testing.T, n int, fromClient bool) []byte {
	t.Helper()
	extra := 0
	if fromClient {
		extra = 4 // the mask
	}
	for _, hdr := range []int{2, 4, 10} {
		p := n - hdr - extra
		if p < 0 {
			continue
		}
		var f []byte
		if fromClient {
			f = cframe(opBinary, payloadOf(p))
		} else {
			f = bframe(opBinary, payloadOf(p))
		}
		if len(f) == n {
			return f
		}
	}
	t.Fatalf("no frame is %d bytes long", n)
	return nil
}
