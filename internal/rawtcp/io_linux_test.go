package rawtcp

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ioPair returns a connection of the kind under test ("Conn": accepted by
// a Listener; "wrapped": net's, through Wrap) and the plain other end.
func ioPair(t *testing.T, kind string) (net.Conn, net.Conn) {
	t.Helper()
	if kind == "Conn" {
		c, other := pair(t, listen(t, "127.0.0.1:0"), false)
		return c, other
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w, ok := Wrap(c).(*wrapped)
	if !ok {
		t.Fatal("a TCP connection was not wrapped")
	}
	t.Cleanup(func() { w.Close(); other.Close() })
	return w, other
}

// TestRawIO checks that both kinds of connection read and write as net's
// TCPConn does: data both ways, a write larger than the socket buffers
// that must wait for the reader, end of stream, deadlines, a closed
// connection and a reset peer, with errors worded and typed as net's.
func TestRawIO(t *testing.T) {
	for _, kind := range []string{"Conn", "wrapped"} {
		t.Run(kind, func(t *testing.T) { testRawIO(t, kind) })
	}
}

func testRawIO(t *testing.T, kind string) {
	rawPair := func(t *testing.T) (net.Conn, net.Conn) { return ioPair(t, kind) }
	t.Run("echo", func(t *testing.T) {
		rs, other := rawPair(t)
		rs.SetDeadline(time.Now().Add(10 * time.Second))
		other.Write([]byte("ping"))
		buf := make([]byte, 16)
		n, err := rs.Read(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("Read: %q, %v", buf[:n], err)
		}
		if n, err := rs.Write([]byte("pong")); n != 4 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		other.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(other, buf[:4]); err != nil || string(buf[:4]) != "pong" {
			t.Fatalf("peer read %q, %v", buf[:4], err)
		}
	})
	t.Run("large write waits for the reader", func(t *testing.T) {
		rs, other := rawPair(t)
		rs.SetWriteDeadline(time.Now().Add(20 * time.Second))
		data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		got := make(chan [32]byte, 1)
		go func() {
			// Start late, so that the writer meets a full socket.
			time.Sleep(100 * time.Millisecond)
			h := sha256.New()
			other.SetReadDeadline(time.Now().Add(20 * time.Second))
			io.CopyN(h, other, int64(len(data)))
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			got <- sum
		}()
		if n, err := rs.Write(data); n != len(data) || err != nil {
			t.Fatalf("Write: %d of %d, %v", n, len(data), err)
		}
		if sum := <-got; sum != sha256.Sum256(data) {
			t.Fatal("the reader got other bytes than were written")
		}
	})
	t.Run("end of stream", func(t *testing.T) {
		rs, other := rawPair(t)
		other.Close()
		rs.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := rs.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the peer closed: %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		rs, _ := rawPair(t)
		rs.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := rs.Read(make([]byte, 8))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past the deadline: %v, want a timeout", err)
		}
		if !strings.HasPrefix(err.Error(), "read tcp ") {
			t.Errorf("error %q is not worded as net's", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		rs, _ := rawPair(t)
		rs.Close()
		if _, err := rs.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := rs.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset peer", func(t *testing.T) {
		rs, other := rawPair(t)
		other.(*net.TCPConn).SetLinger(0)
		other.Close() // RST
		rs.SetDeadline(time.Now().Add(10 * time.Second))
		time.Sleep(50 * time.Millisecond)
		_, err := rs.Write(make([]byte, 1<<20))
		if err == nil {
			_, err = rs.Write(make([]byte, 1<<20))
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Write to a reset peer: %v, want a reset or broken pipe", err)
		}
		if !strings.HasPrefix(err.Error(), "write tcp ") {
			t.Errorf("error %q is not worded as net's", err)
		}
	})
}

// TestWrapOnlyTCP checks what is and is not wrapped, and that Unwrap gives
// back net's own connection.
func TestWrapOnlyTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Error("a pipe was wrapped")
	}
	w, _ := ioPair(t, "wrapped")
	if _, ok := Unwrap(w).(*net.TCPConn); !ok {
		t.Errorf("Unwrap gave %T, want *net.TCPConn", Unwrap(w))
	}
	c, _ := ioPair(t, "Conn")
	if Unwrap(c) != c || Wrap(c) != c {
		t.Error("a rawtcp Conn was wrapped or unwrapped")
	}
}
