package rawtcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// listen returns a rawtcp Listener on a loopback port of the family of
// addr ("127.0.0.1:0" or "[::1]:0").
func listen(t *testing.T, addr string) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	l, err := Listen(ln.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// pair returns an accepted *Conn and the client connected to it, dialled
// with Dial or with net.
func pair(t *testing.T, l *Listener, rawDial bool) (*Conn, net.Conn) {
	t.Helper()
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	var client net.Conn
	var err error
	if rawDial {
		client, err = Dial(context.Background(), addr, time.Second, Keepalive{})
	} else {
		client, err = net.Dial("tcp", addr.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*Conn), client
}

func TestConnReadWriteAddrs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		addr    string
		rawDial bool
	}{
		{"ipv4, net client", "127.0.0.1:0", false},
		{"ipv4, raw client", "127.0.0.1:0", true},
		{"ipv6, net client", "[::1]:0", false},
		{"ipv6, raw client", "[::1]:0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, tc.addr)
			c, client := pair(t, l, tc.rawDial)
			if got, want := c.RemoteAddr().String(), client.LocalAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want the client's %s", got, want)
			}
			if got, want := c.LocalAddr().String(), client.RemoteAddr().String(); got != want {
				t.Errorf("LocalAddr = %s, want %s", got, want)
			}
			if ip := c.RemoteAddr().(*net.TCPAddr).IP; tc.addr[0] != '[' && len(ip) != net.IPv4len {
				t.Errorf("IPv4 peer has a %d-byte IP, want 4 as net gives", len(ip))
			}
			msg := make([]byte, 100_000) // more than one read's worth
			for i := range msg {
				msg[i] = byte(i)
			}
			go func() {
				client.Write(msg)
			}()
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(msg) {
				t.Fatal("bytes read differ from those written")
			}
			if n, err := c.Write([]byte("pong")); n != 4 || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "pong" {
				t.Fatalf("client read %q, %v", buf, err)
			}
		})
	}
}

// TestSocketOptions: accepted sockets inherit TCP_NODELAY from the
// listener; dialled ones get it, and keepalive when asked.
func TestSocketOptions(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	c, _ := pair(t, l, false)
	ka := Keepalive{Idle: 21, Interval: 7, Count: 3}
	d, err := Dial(context.Background(), l.Addr().(*net.TCPAddr).AddrPort(), time.Second, ka)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct {
		name       string
		c          *Conn
		level, opt int
		want       int
	}{
		{"accepted TCP_NODELAY", c, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
		{"dialled TCP_NODELAY", d, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
		{"dialled SO_KEEPALIVE", d, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"dialled TCP_KEEPIDLE", d, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 21},
		{"dialled TCP_KEEPINTVL", d, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 7},
		{"dialled TCP_KEEPCNT", d, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 3},
	} {
		rc, _ := tc.c.SyscallConn()
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), tc.level, tc.opt) })
		if gerr != nil || got != tc.want {
			t.Errorf("%s = %d (%v), want %d", tc.name, got, gerr, tc.want)
		}
	}
}

// TestClose: the peer sees the end at once, not when the batch releases
// the descriptor; calls after Close fail with net.ErrClosed; data left
// unread makes the close a reset, as close(2) does. A connection that never
// waited has no file, and Close closes its descriptor; one that waited has
// a file, and its number is held by the placeholder until the batch runs.
func TestClose(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	holdBatches(t)
	for _, tc := range []struct {
		name   string
		waited bool
	}{
		{"never waited", false},
		{"waited", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, client := pair(t, l, false)
			if tc.waited {
				waitOnce(t, c)
			}
			fd := fdOf(c)
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("peer read after Close: %d, %v; want EOF", n, err)
			}
			target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			switch {
			case tc.waited && (err != nil || target != "/dev/null"):
				t.Errorf("descriptor %d after Close: %q, %v; want the placeholder /dev/null", fd, target, err)
			case !tc.waited && err == nil:
				t.Errorf("descriptor %d after Close: still open (%q); want it closed", fd, target)
			}
			for name, call := range map[string]func() error{
				"Read":       func() error { _, err := c.Read(make([]byte, 1)); return err },
				"Write":      func() error { _, err := c.Write([]byte("x")); return err },
				"Close":      c.Close,
				"CloseWrite": c.CloseWrite,
				"RawConn.Control": func() error {
					rc, _ := c.SyscallConn()
					return rc.Control(func(uintptr) { t.Error("Control ran after Close") })
				},
				"RawConn.Read": func() error {
					rc, _ := c.SyscallConn()
					return rc.Read(func(uintptr) bool { return true })
				},
			} {
				if err := call(); !errors.Is(err, net.ErrClosed) {
					t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
				}
			}

			c, client = pair(t, l, false)
			if tc.waited {
				waitOnce(t, c)
			}
			client.Write([]byte("left unread"))
			time.Sleep(20 * time.Millisecond) // let it arrive
			c.Close()
			client.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("peer read after closing with unread data: %v, want a reset", err)
			}
		})
	}
}

// waitOnce makes c wait once for readability (a read that times out), so
// that it has its file.
func waitOnce(t *testing.T, c *Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with nothing to read: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	if !c.hasF.Load() {
		t.Fatal("no file after a wait")
	}
}

// TestNoFileUntilWait: an accepted connection whose calls never wait
// never joins Go's netpoller; the first call that must wait gives it its
// file, and still gets what arrives.
func TestNoFileUntilWait(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	c, client := pair(t, l, false)
	client.Write([]byte("request"))
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := io.ReadAtLeast(c, buf, len("request"))
	if err != nil || string(buf[:n]) != "request" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if c.hasF.Load() {
		t.Fatal("a connection that never waited has a file")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		client.Write([]byte("later"))
	}()
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "later" {
		t.Fatalf("read after a wait: %q, %v", buf[:n], err)
	}
	if !c.hasF.Load() {
		t.Fatal("a connection that waited has no file")
	}
}

// pollWait is a read wait for SetReadWait that waits in ppoll(2) for c's
// socket, as the splice's poller would in its epoll set.
func pollWait(c *Conn) func(deadline time.Time) {
	return func(deadline time.Time) {
		pfd := struct {
			fd             int32
			events, revent int16
		}{fd: int32(c.fd), events: 0x1} // POLLIN
		var ts *syscall.Timespec
		if !deadline.IsZero() {
			t := syscall.NsecToTimespec(max(int64(time.Until(deadline)), 0))
			ts = &t
		}
		syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	}
}

// TestReadWait: with SetReadWait, a read that must wait waits there, not
// on Go's netpoller: the connection, accepted or dialled, never gets its
// file. The read gets what arrives, keeps its deadline, and a Close ends
// it at once.
func TestReadWait(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	for _, dialled := range []bool{false, true} {
		t.Run(fmt.Sprintf("dialled=%v", dialled), func(t *testing.T) {
			accepted, client := pair(t, l, true)
			c, peer := accepted, net.Conn(client.(*Conn))
			if dialled {
				c, peer = client.(*Conn), accepted
			}
			c.SetReadWait(pollWait(c))
			buf := make([]byte, 64)

			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			start := time.Now()
			if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read with nothing to read: %v, want a timeout", err)
			}
			if d := time.Since(start); d < 45*time.Millisecond {
				t.Errorf("the read timed out after %v, before its 50ms deadline", d)
			}

			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			go func() {
				time.Sleep(20 * time.Millisecond)
				peer.Write([]byte("answer"))
			}()
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "answer" {
				t.Fatalf("read %q, %v; want the answer", buf[:n], err)
			}
			if c.hasF.Load() {
				t.Error("a connection that waited with SetReadWait has a file")
			}

			// AwaitRead waits as that read did, and reads nothing: what
			// comes is left for the read after it.
			go func() {
				time.Sleep(20 * time.Millisecond)
				peer.Write([]byte("second"))
			}()
			start = time.Now()
			if err := c.AwaitRead(); err != nil {
				t.Fatalf("AwaitRead: %v", err)
			}
			if d := time.Since(start); d < 15*time.Millisecond {
				t.Errorf("AwaitRead returned after %v, before anything was sent", d)
			}
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "second" {
				t.Fatalf("read after AwaitRead: %q, %v; want what came", buf[:n], err)
			}

			closed := make(chan struct{})
			go func() {
				time.Sleep(20 * time.Millisecond)
				c.Close()
				close(closed)
			}()
			start = time.Now()
			if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
				t.Errorf("read during Close: %v, want net.ErrClosed", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Close ended a waiting read after %v", d)
			}
			<-closed
			if c.hasF.Load() {
				t.Error("a connection that waited with SetReadWait has a file")
			}
			if err := c.AwaitRead(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("AwaitRead after Close: %v, want net.ErrClosed", err)
			}
			c.SetReadWait(nil)
			if err := c.AwaitRead(); err != nil {
				t.Errorf("AwaitRead without a wait: %v, want nil at once", err)
			}
		})
	}
}

// TestCloseWaitsOutCalls: a raw call in flight keeps the descriptor
// number from being released (and given to another socket) until it
// ends, with or without a file; calls that start after Close fail.
func TestCloseWaitsOutCalls(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	for _, waited := range []bool{false, true} {
		c, client := pair(t, l, false)
		if waited {
			waitOnce(t, c)
		}
		fd := fdOf(c)
		ino := inode(t, fd)
		inCall, end, done := make(chan struct{}), make(chan struct{}), make(chan uint64, 1)
		rc, _ := c.SyscallConn()
		go rc.Control(func(fd uintptr) {
			close(inCall)
			<-end
			done <- inodeOf(int(fd))
		})
		<-inCall
		c.Close()
		// Descriptors opened now must not get fd's number.
		var others []int
		for range 8 {
			o, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			others = append(others, o)
			if o == fd {
				t.Errorf("waited %v: descriptor %d given out again while a call on it was in flight", waited, fd)
			}
		}
		if err := rc.Control(func(uintptr) {}); !errors.Is(err, net.ErrClosed) {
			t.Errorf("waited %v: Control after Close: %v, want net.ErrClosed", waited, err)
		}
		close(end)
		if got := <-done; !waited && got != ino {
			t.Errorf("waited %v: the call in flight saw inode %d, want its socket's %d", waited, got, ino)
		}
		for _, o := range others {
			syscall.Close(o)
		}
		if !waited {
			// The last call out closed the descriptor.
			if _, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
				t.Errorf("descriptor %d still open after the call in flight ended", fd)
			}
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := client.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("waited %v: peer read after Close: %v, want EOF", waited, err)
		}
	}
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	ino := inodeOf(fd)
	if ino == 0 {
		t.Fatalf("fstat %d failed", fd)
	}
	return ino
}

func inodeOf(fd int) uint64 {
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Ino
}

// TestCloseWakesWaiters: Close ends calls waiting on the connection, for
// Read and for RawConn's Read (the splice's), promptly and with
// net.ErrClosed or a closed RawConn.
func TestCloseWakesWaiters(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	for _, tc := range []struct {
		name string
		wait func(c *Conn) error
	}{
		{"Read", func(c *Conn) error { _, err := c.Read(make([]byte, 10)); return err }},
		{"RawConn.Read", func(c *Conn) error {
			rc, _ := c.SyscallConn()
			var b [1]byte
			return rc.Read(func(fd uintptr) bool {
				if c.closed.Load() {
					return true
				}
				_, err := syscall.Read(int(fd), b[:])
				return err != syscall.EAGAIN
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			holdBatches(t) // so that only Close can wake the call
			c, _ := pair(t, l, false)
			done := make(chan error, 1)
			go func() { done <- tc.wait(c) }()
			for c.waiting.Load() == 0 {
				runtime.Gosched()
			}
			time.Sleep(10 * time.Millisecond) // into the netpoller
			c.Close()
			select {
			case err := <-done:
				if tc.name == "Read" && !errors.Is(err, net.ErrClosed) {
					t.Errorf("Read = %v, want net.ErrClosed", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("%s still waiting after Close", tc.name)
			}
		})
	}
}

func TestCloseWrite(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	c, client := pair(t, l, false)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after CloseWrite: %v, want EOF", err)
	}
	client.Write([]byte("still"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still" {
		t.Fatalf("read after CloseWrite: %q, %v", buf, err)
	}
}

func TestDeadlines(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	c, _ := pair(t, l, false)
	c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 25*time.Millisecond || d > 2*time.Second {
		t.Errorf("deadline of 30ms fired after %v", d)
	}
	c.SetReadDeadline(time.Time{})
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past its deadline: %v", err)
	}
}

// TestLazyDeadlines covers what keeping deadlines off the file until a
// call waits (see deadline) must not change: a passed deadline fails calls
// even when bytes are there; a deadline the file was given and the user
// then cleared or moved fails nothing; a deadline moved while a call waits
// reaches that call, for reads, writes and the RawConn's waits.
func TestLazyDeadlines(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	isTimeout := func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
	// fill writes to c until its socket takes no more.
	fill := func(c *Conn) {
		chunk := make([]byte, 64<<10)
		for {
			c.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := c.Write(chunk); err != nil {
				if !isTimeout(err) {
					t.Fatalf("filling the socket: %v", err)
				}
				return
			}
		}
	}
	cases := []struct {
		name string
		run  func(t *testing.T, c *Conn, peer net.Conn)
	}{
		{"passed deadline fails a read that has bytes", func(t *testing.T, c *Conn, peer net.Conn) {
			peer.Write([]byte("x"))
			time.Sleep(10 * time.Millisecond)
			c.SetReadDeadline(time.Now().Add(-time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
				t.Fatalf("read: %v, want a timeout", err)
			}
			c.SetReadDeadline(time.Time{})
			if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
				t.Fatalf("read after clearing: %d, %v", n, err)
			}
		}},
		{"fired deadline cleared while idle fails nothing", func(t *testing.T, c *Conn, peer net.Conn) {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
				t.Fatalf("first read: %v, want a timeout", err)
			}
			c.SetReadDeadline(time.Time{})
			go func() {
				time.Sleep(50 * time.Millisecond)
				peer.Write([]byte("y"))
			}()
			if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
				t.Fatalf("read that waits after clearing: %d, %v", n, err)
			}
		}},
		{"given deadline moved later while idle", func(t *testing.T, c *Conn, peer net.Conn) {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			c.Read(make([]byte, 1))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			go func() {
				time.Sleep(50 * time.Millisecond)
				peer.Write([]byte("z"))
			}()
			if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
				t.Fatalf("read under the later deadline: %d, %v", n, err)
			}
		}},
		{"deadline moved earlier wakes a waiting read", func(t *testing.T, c *Conn, peer net.Conn) {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			done := make(chan error, 1)
			go func() {
				_, err := c.Read(make([]byte, 1))
				done <- err
			}()
			time.Sleep(30 * time.Millisecond)
			c.SetReadDeadline(time.Unix(1, 0))
			select {
			case err := <-done:
				if !isTimeout(err) {
					t.Fatalf("read: %v, want a timeout", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("moving the deadline did not wake the read")
			}
		}},
		{"deadline set while a read waits without one", func(t *testing.T, c *Conn, peer net.Conn) {
			done := make(chan error, 1)
			go func() {
				_, err := c.Read(make([]byte, 1))
				done <- err
			}()
			time.Sleep(30 * time.Millisecond)
			c.SetDeadline(time.Now().Add(20 * time.Millisecond))
			select {
			case err := <-done:
				if !isTimeout(err) {
					t.Fatalf("read: %v, want a timeout", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the deadline did not reach the waiting read")
			}
		}},
		{"write waits under its deadline, which can be cleared", func(t *testing.T, c *Conn, peer net.Conn) {
			fill(c)
			c.SetWriteDeadline(time.Now().Add(30 * time.Millisecond))
			start := time.Now()
			if _, err := c.Write(make([]byte, 1<<20)); !isTimeout(err) {
				t.Fatalf("write to a full socket: %v, want a timeout", err)
			}
			if d := time.Since(start); d < 25*time.Millisecond {
				t.Errorf("write deadline of 30ms fired after %v", d)
			}
			c.SetWriteDeadline(time.Time{})
			go io.Copy(io.Discard, peer)
			if _, err := c.Write(make([]byte, 1<<20)); err != nil {
				t.Fatalf("write after clearing, peer reading: %v", err)
			}
		}},
		{"RawConn wait gets the deadline", func(t *testing.T, c *Conn, peer net.Conn) {
			rc, _ := c.SyscallConn()
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			err := rc.Read(func(uintptr) bool { return false })
			if !isTimeout(err) {
				t.Fatalf("RawConn.Read: %v, want a timeout", err)
			}
			c.SetReadDeadline(time.Time{})
			go func() {
				time.Sleep(50 * time.Millisecond)
				peer.Write([]byte("w"))
			}()
			// The callback looks for itself, as RawConn's must: the
			// byte may come before the wait begins.
			var b [1]byte
			readable := func(fd uintptr) bool {
				n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
				return n > 0 || err != syscall.EAGAIN
			}
			if err := rc.Read(readable); err != nil {
				t.Fatalf("RawConn.Read after clearing: %v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := pair(t, l, false)
			tc.run(t, c, peer)
		})
	}
}

func TestDialErrors(t *testing.T) {
	// A port nobody listens on: take one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	// A listener whose queue is full drops further SYNs, so a dial to it
	// waits: that is the timeout case, on loopback.
	full := fullListener(t)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	for _, tc := range []struct {
		name        string
		ctx         context.Context
		cancelAfter time.Duration // cancel ctx while the dial waits
		addr        netip.AddrPort
		timeout     time.Duration
		check       func(error) bool
	}{
		{"refused", context.Background(), 0, closed, time.Second,
			func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }},
		{"timeout", context.Background(), 0, full, 100 * time.Millisecond,
			func(err error) bool { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }},
		{"cancelled", cancelled, 0, full, time.Second,
			func(err error) bool { return errors.Is(err, context.Canceled) }},
		{"cancelled while waiting, no timeout", context.Background(), 100 * time.Millisecond, full, 0,
			func(err error) bool { return errors.Is(err, context.Canceled) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if tc.cancelAfter > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				time.AfterFunc(tc.cancelAfter, cancel)
			}
			start := time.Now()
			c, err := Dial(ctx, tc.addr, tc.timeout, Keepalive{})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				t.Errorf("error %v is not a dial *net.OpError", err)
			}
			if !tc.check(err) {
				t.Errorf("error %v is not what %s should give", err, tc.name)
			}
			d := time.Since(start)
			if d > max(tc.timeout, tc.cancelAfter)+time.Second {
				t.Errorf("Dial took %v", d)
			}
			// Those that wait for the full listener wait their time.
			if wait := max(tc.timeout, tc.cancelAfter); tc.addr == full && tc.ctx.Err() == nil && d < wait*9/10 {
				t.Errorf("Dial gave up after %v, before its %v", d, wait)
			}
		})
	}
}

// fullListener returns the address of a listener with a backlog of one
// that accepts nothing and already has its queue full.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	// Fill the queue; once a dial stops completing at once, it is full.
	for i := range 8 {
		c, err := net.DialTimeout("tcp", addr.String(), 50*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
		if i == 7 {
			t.Skip("the listen queue did not fill up")
		}
	}
	return addr
}

func TestListenerClose(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still waiting after Close")
	}
}

// TestDescriptorsReleased: every descriptor of closed connections is gone
// once their batch has run.
func TestDescriptorsReleased(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	reap()
	placeholder() // opened once, for good
	before := openFds(t)
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	for range 50 {
		d, err := Dial(context.Background(), addr, time.Second, Keepalive{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		d.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for openFds(t) > before && time.Now().Before(deadline) {
		time.Sleep(reapDelay)
	}
	if n := openFds(t); n > before {
		t.Fatalf("%d descriptors open after the batches, %d before", n, before)
	}
}

// holdBatches keeps descriptors from being released until the test ends,
// once the batches already due have run.
func holdBatches(t *testing.T) {
	time.Sleep(2 * reapDelay)
	reaper.mu.Lock()
	reaper.delay = time.Hour
	reaper.mu.Unlock()
	t.Cleanup(func() {
		reaper.mu.Lock()
		reaper.delay = reapDelay
		reaper.mu.Unlock()
		reap()
	})
}

func fdOf(c *Conn) int { return c.fd }

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// TestCloseRacesCalls closes connections while other goroutines start to
// read and write on them, at every moment relative to Close: each call
// must end (with net.ErrClosed, or with what it read or wrote), none may
// wait on, and every descriptor must be released.
func TestCloseRacesCalls(t *testing.T) {
	l := listen(t, "127.0.0.1:0")
	time.Sleep(2 * reapDelay)
	reap()
	placeholder() // opened once, for good
	before := openFds(t)
	big := make([]byte, 8<<20)
	for i := range 200 {
		c, client := pair(t, l, false)
		done := make(chan error, 2)
		go func() { _, err := c.Read(make([]byte, 8)); done <- err }()
		go func() {
			// Fill the socket so that the write waits.
			_, err := c.Write(big)
			done <- err
		}()
		// Close at varying points: before, during or after the calls
		// start waiting.
		for range i % 7 {
			runtime.Gosched()
		}
		c.Close()
		for range 2 {
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, net.ErrClosed) {
					t.Fatalf("round %d: call ended with %v, want net.ErrClosed", i, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: a call still waits after Close", i)
			}
		}
		client.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for openFds(t) > before && time.Now().Before(deadline) {
		time.Sleep(reapDelay)
	}
	if n := openFds(t); n > before {
		t.Fatalf("%d descriptors open after the batches, %d before", n, before)
	}
}
