package server

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/internal/rawtcp"
)

// TestListenerKeepAlive checks that an accepted client connection carries
// the keepalive options that were set only on the listening socket.
func TestListenerKeepAlive(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// The listener defers accepts until the client has spoken.
	if _, err := client.Write([]byte("GET")); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The proxy's listeners hand out rawtcp connections (see rawListener).
	if _, ok := c.(*rawtcp.Conn); !ok {
		t.Fatalf("accepted a %T, want *rawtcp.Conn", c)
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	} {
		var got int
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			got, gerr = syscall.GetsockoptInt(int(fd), tc.level, tc.opt)
		}); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatalf("%s: %v", tc.name, gerr)
		}
		if got != tc.want {
			t.Errorf("accepted connection: %s = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestDeferredAccept checks the listener's deferred accepts: a client that
// speaks first is handed over with its bytes there to read, and one that
// connects and says nothing is handed over all the same, about deferAccept
// later, rather than left waiting in the kernel.
func TestDeferredAccept(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	rc.Control(func(fd uintptr) {
		got, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT)
	})
	if gerr != nil || got < 1 {
		t.Fatalf("listener: TCP_DEFER_ACCEPT = %d (%v), want at least 1", got, gerr)
	}

	type accepted struct {
		c   net.Conn
		err error
	}
	accepts := make(chan accepted, 2)
	go func() {
		for range 2 {
			c, err := ln.Accept()
			accepts <- accepted{c, err}
			if err != nil {
				return
			}
		}
	}()
	next := func(within time.Duration) net.Conn {
		t.Helper()
		select {
		case a := <-accepts:
			if a.err != nil {
				t.Fatal(a.err)
			}
			t.Cleanup(func() { a.c.Close() })
			return a.c
		case <-time.After(within):
			t.Fatalf("no connection accepted within %v", within)
			return nil
		}
	}

	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	talker, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	if _, err := talker.Write([]byte("GET")); err != nil {
		t.Fatal(err)
	}
	first := next(time.Second)
	if first.RemoteAddr().String() != talker.LocalAddr().String() {
		t.Fatalf("first accepted %v, want the client that spoke (%v)", first.RemoteAddr(), talker.LocalAddr())
	}
	// Its bytes are there: a read allowed to wait a millisecond gets them.
	first.SetReadDeadline(time.Now().Add(time.Millisecond))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(first, buf); err != nil || string(buf) != "GET" {
		t.Fatalf("read %q, %v; want the client's bytes at once", buf, err)
	}
	second := next(10 * time.Second)
	if second.RemoteAddr().String() != silent.LocalAddr().String() {
		t.Fatalf("second accepted %v, want the silent client (%v)", second.RemoteAddr(), silent.LocalAddr())
	}
	t.Logf("silent client accepted after %v", time.Since(start).Round(time.Millisecond))
}
