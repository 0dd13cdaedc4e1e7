//go:build linux

package splice

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
)

// registeredPair dials a backend with rawtcp, as the proxy does, and
// registers the dialled socket: b is the test's end, pb the proxy's, whose
// reads wait in the poller.
func registeredPair(t *testing.T) (b net.Conn, pb *rawtcp.Conn, reg *Registration) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pb, err = rawtcp.Dial(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), time.Second, rawtcp.Keepalive{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	if reg = Register(pb); reg == nil {
		t.Fatal("Register failed on a TCP socket")
	}
	pb.SetReadWait(reg.Wait)
	return b, pb, reg
}

// waitFor polls cond until it holds, for at most 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
}

// TestRegistrationWait: reads of a registered socket wait in the poller,
// for the answer, for their deadline, or for a Close; Release gives the
// slot back.
func TestRegistrationWait(t *testing.T) {
	b, pb, reg := registeredPair(t)
	defer b.Close()
	p := reg.p
	n0 := p.n.Load() - 1 // registrations besides this one
	buf := make([]byte, 64)

	pb.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := pb.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with nothing to read: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 45*time.Millisecond {
		t.Errorf("the read timed out after %v, before its 50ms deadline", d)
	}

	pb.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() {
		time.Sleep(20 * time.Millisecond)
		b.Write([]byte("answer"))
	}()
	n, err := pb.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("read %q, %v; want the answer", buf[:n], err)
	}

	closed := make(chan struct{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		pb.Close()
		close(closed)
	}()
	start = time.Now()
	if _, err := pb.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read during Close: %v, want net.ErrClosed", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close ended a waiting read after %v", d)
	}
	<-closed
	reg.Release()
	reg.Release() // twice is harmless
	if n := p.n.Load(); n != n0 {
		t.Errorf("registrations after Release: %d, want %d", n, n0)
	}
}

// TestRegistrationAdopted: a session takes its backend's registration over
// as it is (same slot, no new registration), and serves at once what came
// before it started, whether its report came while nobody waited or a read
// left it in the socket. A session that cannot run inline releases it.
func TestRegistrationAdopted(t *testing.T) {
	early := bframe(opText, []byte("right after the 101"))
	tests := []struct {
		name   string
		before []byte // what the backend sends before the session starts
		hangUp bool   // and then its end of stream
		drain  bool   // a wait consumed its report, and the read was full
		opt    Options
		inline bool
	}{
		{"quiet until started", nil, false, false, Options{}, true},
		{"report while nobody waited", early, false, false, Options{}, true},
		{"bytes a full read left", early, false, true, Options{}, true},
		{"bytes and a hang-up", early, true, false, Options{}, true},
		{"bytes and a hang-up a wait saw", early, true, true, Options{}, true},
		{"throttled: released", early, false, false, Options{MessagesPerSecond: 100}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, pc := tcpPair(t)
			defer c.Close()
			b, pb, reg := registeredPair(t)
			defer b.Close()
			p, token := reg.p, reg.token
			n0 := p.n.Load() - 1
			if tt.before != nil {
				write(t, b, tt.before, 0)
				if tt.hangUp {
					b.(*net.TCPConn).CloseWrite()
				}
				waitFor(t, "the report", func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					return len(reg.ready) > 0 && (reg.hup != hupNone) == tt.hangUp
				})
				if tt.drain {
					<-reg.ready
					reg.SetUnread(true)
				}
			}
			pb.SetReadWait(nil)
			opt := tt.opt
			opt.Backend = reg
			s := New(pc, nil, pb, nil, opt)
			if s.inline != tt.inline {
				t.Fatalf("inline = %v, want %v", s.inline, tt.inline)
			}
			done := make(chan Stats, 1)
			s.Start(context.Background(), func(st Stats) { done <- st })
			// ended waits for the session's end, and its registrations'.
			ended := func() {
				t.Helper()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("the session did not end")
				}
				waitFor(t, "the registrations to go", func() bool { return p.n.Load() <= n0 })
			}
			if tt.inline && s.b2c.token != token {
				t.Errorf("the backend direction has token %x, not its registration's %x", s.b2c.token, token)
			}
			if tt.before != nil {
				// It must come without anything else from the backend.
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				expectBytes(t, c, tt.before)
				if tt.hangUp {
					// The backend's end, without a close frame.
					expectClose(t, c, 1014, false, false)
				}
				c.SetReadDeadline(time.Time{})
			}
			if tt.hangUp {
				c.Close()
				b.Close()
				ended()
				return
			}
			later := bframe(opText, []byte("later"))
			write(t, b, later, 0)
			expectBytes(t, c, later)
			in := cframe(opText, []byte("to the backend"))
			write(t, c, in, 0)
			expectBytes(t, b, in)

			c.Close()
			expectClose(t, b, 1001, true, false)
			b.Close()
			ended()
		})
	}
}
