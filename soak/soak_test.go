//go:build soak

// Package soak holds the soak test: the real sluice binary under sustained
// WebSocket and REST load while its configuration is reloaded and its
// upstreams are killed and restarted. It is kept out of the default test
// run by the soak build tag:
//
//	go test -tags soak -run Soak -count=1 -v ./soak                 # 2 minutes
//	go test -tags soak -run Soak -count=1 -v ./soak -soak.duration 30s
//
// Everything runs on 127.0.0.1, bounded in time.
package soak

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

var (
	duration   = flag.Duration("soak.duration", 2*time.Minute, "how long the load runs")
	wsSessions = flag.Int("soak.ws", 1000, "concurrent WebSocket sessions")
	restConns  = flag.Int("soak.rest", 50, "concurrent REST clients")
	reloadEvry = flag.Duration("soak.reload", 5*time.Second, "config reload period")
	killEvery  = flag.Duration("soak.kill", 20*time.Second, "upstream kill/restart period")
)

// backend is a REST + WebSocket echo server that can be killed (listener
// and every connection closed at once, like a crashed process) and
// restarted on the same address.
type backend struct {
	name string
	addr string

	mu    sync.Mutex
	srv   *http.Server
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (b *backend) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger briefly after a kill
		if ln, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restarting backend %s: %v", b.name, err)
	}
	b.addr = ln.Addr().String()
	// A short idle timeout lets sluice's idle upstream connections (two
	// goroutines each) go away soon after the load stops, so the goroutine
	// count can be compared with the baseline.
	srv := &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch s {
			case http.StateNew:
				b.conns[c] = struct{}{}
			case http.StateClosed:
				delete(b.conns, c)
			}
		}}
	b.mu.Lock()
	b.srv = srv
	b.conns = map[net.Conn]struct{}{}
	b.mu.Unlock()
	b.wg.Go(func() { srv.Serve(ln) })
}

// kill drops the listener and every connection without a close frame.
func (b *backend) kill() {
	b.mu.Lock()
	srv := b.srv
	conns := b.conns
	b.conns = map[net.Conn]struct{}{}
	b.mu.Unlock()
	srv.Close()
	for c := range conns {
		c.Close()
	}
	b.wg.Wait()
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") == "" {
		io.WriteString(w, b.name)
		return
	}
	conn, _, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return
	}
	// Hijacked connections leave ConnState tracking: track them here.
	b.mu.Lock()
	b.conns[conn] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.conns, conn)
		b.mu.Unlock()
		conn.Close()
	}()
	for {
		msg, op, err := wsutil.ReadClientData(conn)
		if err != nil {
			return
		}
		if wsutil.WriteServerMessage(conn, op, msg) != nil {
			return
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc reads a number from /proc/PID/status.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(field + `:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// metric reads an unlabelled metric from the admin /metrics, -1 if absent.
func metric(admin, name string) int64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return -1
}

func goroutines(admin string) int { return int(metric(admin, "go_goroutines")) }

func heapInuse(admin string) int64 { return metric(admin, "go_memstats_heap_inuse_bytes") }

type counters struct {
	restOK, rest502, restOther, restHang atomic.Int64
	wsEchoes, wsOpened                   atomic.Int64
	wsDropped1014                        atomic.Int64 // backend killed under the session: unavoidable
	wsDroppedNearKill                    atomic.Int64 // no close frame, in the 2.5 s after a kill
	wsDroppedOther                       atomic.Int64 // anything else: a reload or a bug
	lastKill                             atomic.Int64 // unix nanoseconds of the latest kill
	wsDialFailed                         atomic.Int64
	mu                                   sync.Mutex
	otherSamples                         []string
}

func (c *counters) sample(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.otherSamples) < 10 {
		c.otherSamples = append(c.otherSamples, fmt.Sprintf(format, args...))
	}
}

func TestSoak(t *testing.T) {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)

	dir := t.TempDir()
	bin := filepath.Join(dir, "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("building sluice: %v\n%s", err, out)
	}
	b1 := &backend{name: "b1", addr: freeAddr(t)}
	b2 := &backend{name: "b2", addr: freeAddr(t)}
	b1.start(t)
	b2.start(t)
	defer b1.kill()
	defer b2.kill()

	httpAddr, adminAddr := freeAddr(t), freeAddr(t)
	conf := func(gen int) string {
		// Each reload changes something real: a header value and the
		// rate limit's rps, so new routes are built every time.
		return fmt.Sprintf(`listen: {http: %q}
admin: {listen: %q}
log: {access: off}
timeouts: {connect: 1s, response_header: 10s, shutdown: 10s}
routes:
  - name: api
    path: /api
    upstreams: [http://%s, http://%s]
    headers: {request: {set: {X-Generation: "%d"}}}
  - name: ws
    path: /ws
    upstreams: [http://%s, http://%s]
    websocket: {messages_per_second: %d, message_burst: 100}
`, httpAddr, adminAddr, b1.addr, b2.addr, gen, b1.addr, b2.addr, 1000+gen)
	}
	cfgPath := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfgPath, []byte(conf(0)), 0o600)
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for goroutines(adminAddr) < 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sluice did not start:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Warm up once so the baseline includes pools that stay.
	http.Get("http://" + httpAddr + "/api/")
	time.Sleep(500 * time.Millisecond)
	baseG, baseRSS, baseHeap := goroutines(adminAddr), procStatus(pid, "VmRSS"), heapInuse(adminAddr)
	t.Logf("baseline: %d goroutines, %d KiB RSS, %d KiB heap in use", baseG, baseRSS, baseHeap>>10)

	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	var c counters
	var wg sync.WaitGroup

	// REST clients: every request must end, 200 or (while an upstream is
	// being killed) 502; a client-side timeout counts as a hang.
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *restConns}}
	for range *restConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := client.Get("http://" + httpAddr + "/api/x")
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						c.restHang.Add(1)
					} else {
						c.restOther.Add(1)
						c.sample("rest: %v", err)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 200:
					c.restOK.Add(1)
				case 502:
					c.rest502.Add(1)
				default:
					c.restOther.Add(1)
					c.sample("rest: status %d", resp.StatusCode)
				}
			}
		})
	}

	// WebSocket sessions: each echoes a message about once a second and
	// reconnects when dropped. A drop must be a 1014 (the backend was
	// killed); anything else is counted against us.
	for i := range *wsSessions {
		wg.Go(func() {
			msg := []byte(fmt.Sprintf("session %d", i))
			for ctx.Err() == nil {
				conn, _, _, err := ws.Dial(ctx, "ws://"+httpAddr+"/ws")
				if err != nil {
					if ctx.Err() == nil {
						c.wsDialFailed.Add(1)
						c.sample("ws dial: %v", err)
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				c.wsOpened.Add(1)
				stop := context.AfterFunc(ctx, func() { conn.Close() })
				tick := time.NewTicker(time.Second + time.Duration(i%100)*time.Millisecond)
				for ctx.Err() == nil {
					<-tick.C
					if ctx.Err() != nil {
						break
					}
					conn.SetDeadline(time.Now().Add(10 * time.Second))
					err := wsutil.WriteClientText(conn, msg)
					var f ws.Frame
					if err == nil {
						f, err = ws.ReadFrame(conn)
					} else if ctx.Err() == nil {
						// The write failed: sluice may have closed the
						// connection after a close frame we have not read
						// yet. Read it to learn why.
						conn.SetReadDeadline(time.Now().Add(time.Second))
						if pending, rerr := ws.ReadFrame(conn); rerr == nil {
							f, err = pending, nil
						}
					}
					if err == nil && f.Header.OpCode == ws.OpClose {
						// Read the code without validating it: wsutil
						// rejects 1014, which RFC 6455 left unassigned.
						code, reason := ws.ParseCloseFrameData(f.Payload)
						if code == 1014 {
							c.wsDropped1014.Add(1)
						} else {
							c.wsDroppedOther.Add(1)
							c.sample("ws: close %d %q", code, reason)
						}
						break
					}
					if err != nil {
						if ctx.Err() != nil {
							break
						}
						// A backend killed in the middle of writing a frame
						// leaves sluice unable to send a close frame after
						// the half it forwarded: only a TCP close is left.
						if time.Since(time.Unix(0, c.lastKill.Load())) < 2500*time.Millisecond { // the next echo after a kill
							c.wsDroppedNearKill.Add(1)
							c.sample("ws near a kill: %v", err)
							break
						}
						c.wsDroppedOther.Add(1)
						c.sample("ws: %v", err)
						break
					}
					got := f.Payload
					if f.Header.OpCode != ws.OpText || !f.Header.Fin {
						c.wsDroppedOther.Add(1)
						c.sample("ws: unexpected frame %v fin %v", f.Header.OpCode, f.Header.Fin)
						break
					}
					if string(got) != string(msg) {
						c.wsDroppedOther.Add(1)
						c.sample("ws: echo %q", got)
						break
					}
					c.wsEchoes.Add(1)
				}
				tick.Stop()
				stop()
				conn.Close()
			}
		})
	}

	// Reload every reloadEvery; kill and restart an upstream every killEvery.
	reloads, kills := 0, 0
	var peakG int
	var peakRSS int64
	wg.Go(func() {
		reload := time.NewTicker(*reloadEvry)
		kill := time.NewTicker(*killEvery)
		sample := time.NewTicker(time.Second)
		defer reload.Stop()
		defer kill.Stop()
		defer sample.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-reload.C:
				reloads++
				os.WriteFile(cfgPath, []byte(conf(reloads)), 0o600)
				cmd.Process.Signal(syscall.SIGHUP)
			case <-kill.C:
				kills++
				victim := b1
				if kills%2 == 0 {
					victim = b2
				}
				c.lastKill.Store(time.Now().UnixNano())
				victim.kill()
				time.Sleep(500 * time.Millisecond) // down for a moment, like a restart
				victim.start(t)
			case <-sample.C:
				peakG = max(peakG, goroutines(adminAddr))
				peakRSS = max(peakRSS, procStatus(pid, "VmRSS"))
			}
		}
	})
	wg.Wait()
	client.CloseIdleConnections()

	// Everything closed: sluice should come back to where it started.
	// Goroutines end as soon as connections close; the heap shrinks at the
	// next GC; freed pages go back to the OS within sluice's memory check
	// (30 s), so RSS is given a minute.
	const rssMargin = 8 << 10 // KiB
	// Pools keep some buffers (sync.Pool empties over two GCs, and an idle
	// process collects rarely) and the runtime keeps its goroutine
	// descriptors; a leak would grow with the ~2,000 sessions instead.
	const heapMargin = 8 << 20 // bytes
	var endG int
	var endRSS, endHeap int64
	settle := time.Now().Add(60 * time.Second)
	for {
		endG, endRSS, endHeap = goroutines(adminAddr), procStatus(pid, "VmRSS"), heapInuse(adminAddr)
		back := endG <= baseG+5 && endHeap <= baseHeap+heapMargin && endRSS <= baseRSS+rssMargin
		if back || time.Now().After(settle) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	reloadLines := strings.Count(stderr.String(), "config reloaded")

	t.Logf("ran %v: %d reloads (%d confirmed in the log), %d upstream kills", *duration, reloads, reloadLines, kills)
	t.Logf("REST: %d ok, %d 502 (kills), %d other failures, %d hangs",
		c.restOK.Load(), c.rest502.Load(), c.restOther.Load(), c.restHang.Load())
	t.Logf("WebSocket: %d sessions opened, %d echoes, %d dropped with 1014 (kills), %d dropped without a close frame just after a kill, %d dropped otherwise, %d dials failed",
		c.wsOpened.Load(), c.wsEchoes.Load(), c.wsDropped1014.Load(), c.wsDroppedNearKill.Load(), c.wsDroppedOther.Load(), c.wsDialFailed.Load())
	t.Logf("sluice: goroutines %d -> peak %d -> %d after; RSS %d KiB -> peak %d KiB -> %d KiB after; heap in use %d KiB -> %d KiB after",
		baseG, peakG, endG, baseRSS, peakRSS, endRSS, baseHeap>>10, endHeap>>10)
	for _, s := range c.otherSamples {
		t.Logf("sample: %s", s)
	}

	if reloadLines < reloads-1 {
		t.Errorf("only %d of %d reloads confirmed", reloadLines, reloads)
	}
	if c.wsDroppedOther.Load() != 0 {
		t.Errorf("%d WebSocket sessions dropped for reasons other than a killed upstream", c.wsDroppedOther.Load())
	}
	if c.restOther.Load() != 0 || c.restHang.Load() != 0 {
		t.Errorf("%d REST failures other than 502, %d hangs", c.restOther.Load(), c.restHang.Load())
	}
	if c.restOK.Load() == 0 || c.wsEchoes.Load() == 0 {
		t.Error("no traffic went through")
	}
	if endG > baseG+5 {
		t.Errorf("goroutines did not come back: %d at start, %d after", baseG, endG)
	}
	if endHeap > baseHeap+heapMargin {
		t.Errorf("heap did not come back: %d KiB at start, %d KiB after", baseHeap>>10, endHeap>>10)
	}
	// RSS is reported, not asserted: after a peak the runtime keeps its
	// metadata (GC bitmaps, poll descriptors) and the code pages the load
	// touched, about 10 MiB here, however much heap goes back.
}
