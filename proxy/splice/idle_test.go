package splice

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
	"unsafe"
)

var (
	idleSessions = flag.Int("idle-sessions", 0, "TestIdleMemory: number of idle sessions to hold open (0 = skip)")
	idleTimers   = flag.Bool("idle-timers", false, "TestIdleMemory: give the sessions an idle timeout and a ping interval")
	idleHeapProf = flag.String("idle-heapprofile", "", "TestIdleMemory: write a heap profile of the idle sessions to this file")
)

// peerEnv marks a child process started by TestIdleMemory to hold the peers'
// ends of the connections, so that the measured process holds only the
// session's own (and the fd limit covers twice as many sessions).
const peerEnv = "SPLICE_IDLE_PEER"

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		idlePeer()
		return
	}
	os.Exit(m.Run())
}

// idlePeer accepts connections and holds them without reading until its
// stdin closes.
func idlePeer() {
	raiseFileLimit()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	var conns []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			continue // fd exhaustion: the parent will report the failed dial
		}
		conns = append(conns, c)
	}
}

// startPeer starts a peer process and returns its address.
func startPeer(t *testing.T) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), peerEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("peer process: %v", err)
	}
	stdout.Close()
	return addr[:len(addr)-1]
}

type memSample struct{ rss, heap, stack uint64 }

func sampleMem(t *testing.T) memSample {
	// Several collections: each one halves the stacks of parked goroutines
	// that use less than a quarter of them. FreeOSMemory returns freed
	// pages, so that RSS follows.
	for range 6 {
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	var rss uint64
	for line := range bytes.Lines(status) {
		if f := bytes.Fields(line); len(f) >= 2 && string(f[0]) == "VmRSS:" {
			kb, _ := strconv.ParseUint(string(f[1]), 10, 64)
			rss = kb << 10
		}
	}
	return memSample{rss: rss, heap: ms.HeapInuse, stack: ms.StackInuse}
}

func perSession(a, b memSample, n int) string {
	d := func(x, y uint64) float64 { return (float64(y) - float64(x)) / float64(n) }
	return fmt.Sprintf("RSS %6.0f B, HeapInuse+StackInuse %6.0f B (heap %5.0f, stacks %5.0f)",
		d(a.rss, b.rss), d(a.heap+a.stack, b.heap+b.stack), d(a.heap, b.heap), d(a.stack, b.stack))
}

// TestIdleMemory measures what an idle session costs: go test -run
// IdleMemory -idle-sessions 9990 (skipped by default). The peers' ends live
// in two child processes; this process holds 2 sockets per session.
func TestIdleMemory(t *testing.T) {
	n := *idleSessions
	if n == 0 {
		t.Skip("set -idle-sessions to measure")
	}
	if lim := raiseFileLimit(); uint64(2*n+32) > lim {
		t.Fatalf("%d sessions need %d file descriptors; the limit is %d (at most %d sessions)", n, 2*n+32, lim, (lim-32)/2)
	}
	clientAddr, backendAddr := startPeer(t), startPeer(t)
	opt := Options{}
	if *idleTimers {
		opt.IdleTimeout, opt.PingInterval = time.Hour, time.Hour
	}

	base := sampleMem(t)
	goroutines := runtime.NumGoroutine()
	pcs, pbs := make([]net.Conn, n), make([]net.Conn, n)
	for i := range n {
		var err error
		if pcs[i], err = net.Dial("tcp", clientAddr); err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if pbs[i], err = net.Dial("tcp", backendAddr); err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
	}
	conns := sampleMem(t)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Stats, n)
	for i := range n {
		s := New(pcs[i], nil, pbs[i], nil, opt)
		// Start, not Run on a goroutine: the session alone is measured.
		s.Start(ctx, func(st Stats) { done <- st })
	}
	pcs, pbs = nil, nil
	// On Linux these sessions (plain sockets, no throttling) run inline:
	// the pollers' goroutines serve them, and they never have one of their
	// own. Elsewhere each direction keeps its goroutine.
	started := time.Now()
	want := goroutines + len(pollers.all)
	if runtime.GOOS != "linux" {
		want = goroutines + 2*n
	}
	for deadline := started.Add(2*quietPeriod + 60*time.Second); runtime.NumGoroutine() > want; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines %v after the last session started, want <= %d", runtime.NumGoroutine(), time.Since(started), want)
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by the deadline
	}
	t.Logf("no goroutine per session %v after the last session started", time.Since(started).Round(time.Millisecond))
	sessions := sampleMem(t)
	if *idleHeapProf != "" {
		f, err := os.Create(*idleHeapProf)
		if err != nil {
			t.Fatal(err)
		}
		pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
	}
	var sz Session
	t.Logf("%d idle sessions, timers %v; Session struct %d B, goroutines %d", n, *idleTimers, unsafe.Sizeof(sz), runtime.NumGoroutine()-goroutines)
	t.Logf("sockets alone (2 per session): %s", perSession(base, conns, n))
	t.Logf("session on top of its sockets: %s", perSession(conns, sessions, n))
	t.Logf("total per idle session:        %s", perSession(base, sessions, n))

	cancel()
	for range n {
		<-done
	}
}

// TestSessionSizeClass keeps the Session within its allocation size class:
// objects over 512 bytes that hold pointers carry an 8-byte header, and a
// Session over 1016 bytes would take the 1152-byte class, 128 bytes more
// for every idle session.
func TestSessionSizeClass(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("sized for 64-bit platforms")
	}
	if n := unsafe.Sizeof(Session{}); n+8 > 1024 {
		t.Fatalf("Session is %d bytes: with the allocator's header it no longer fits 1024", n)
	}
}
