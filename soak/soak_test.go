//go:build soak

// Package soak holds the soak test: the real sluice binary under sustained
// WebSocket and REST load while its configuration is reloaded and its
// upstreams are killed and restarted; afterwards, its goroutines, heap and
// RSS must come back near where they started, and where its memory is gets
// printed. It is kept out of the default test run by the soak build tag:
//
//	go test -tags soak -run Soak -count=1 -v ./soak                 # 2 minutes, ~3 in all
//	go test -tags soak -run Soak -count=1 -v ./soak -soak.duration 30s
//
// Memory comes back about a minute after the load, whatever its length
// (see server/memory.go). Everything runs on 127.0.0.1, bounded in time.
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
	"github.com/sluice-proxy/sluice/internal/testaddr"
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

func freeAddr(t *testing.T) string { return testaddr.Addr(t) }

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

// adminClient scrapes sluice's admin listener. Without compression: a
// gzip scrape makes sluice allocate a flate writer (~0.75 MiB) whenever its
// pool has been emptied, which would blur the memory being measured.
var adminClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableCompression: true}}

// metric reads an unlabelled metric from the admin /metrics, -1 if absent.
func metric(admin, name string) int64 {
	resp, err := adminClient.Get("http://" + admin + "/metrics")
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
	// Warm up on each path the load takes until sluice has collected
	// twice (the runtime's scavenger starts after the second). What any
	// use of them brings in once and for all belongs in the baseline, not
	// in the load's account: code pages, pools, and what the first
	// collections set up (GC metadata, ~1.4 MiB, and worker threads).
	idleG := goroutines(adminAddr)
	if conn, _, _, err := ws.Dial(context.Background(), "ws://"+httpAddr+"/ws"); err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if wsutil.WriteClientText(conn, []byte("warm-up")) == nil {
			ws.ReadFrame(conn)
		}
		conn.Close()
	}
	warm := &http.Client{Timeout: 5 * time.Second}
	deadline = time.Now().Add(30 * time.Second)
	for metric(adminAddr, "go_gc_duration_seconds_count") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("sluice did not collect during 30 s of warm-up")
		}
		for range 100 {
			if resp, err := warm.Get("http://" + httpAddr + "/api/"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	warm.CloseIdleConnections()
	// The connections of the warm-up end (idle upstream ones after the
	// backends' 2 s idle timeout) before the baseline is taken.
	deadline = time.Now().Add(10 * time.Second)
	for goroutines(adminAddr) > idleG && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	base, err := readMemory(pid, adminAddr)
	if err != nil {
		t.Fatalf("reading sluice's memory: %v", err)
	}
	t.Logf("baseline: %v", base)

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
	loadEnd := time.Now()
	client.CloseIdleConnections()
	if end, err := readMemory(pid, adminAddr); err == nil {
		t.Logf("end of the load: %v", end)
	}

	// Everything closed: sluice should come back to where it started.
	// Goroutines end as soon as connections close. Memory comes back when
	// sluice's releaseMemory finds the heap quiet: it checks every 30 s and
	// acts once the runtime started no collection for a whole period, so
	// within about 60 s of the load's last collection; 90 s leaves room for
	// one more period.
	const settleWait = 90 * time.Second
	// The release empties sync.Pools too; what stays is the runtime's
	// descriptor of each goroutine of the peak (0.5 KiB, never freed) and
	// spans that a few of them keep in use. A leak would grow with the
	// thousands of sessions and hundreds of thousands of requests instead.
	heapMargin := 2<<20 + 1<<10*int64(peakG)
	// What the Go runtime keeps for good after a peak, measured here (see
	// server/memory.go): per goroutine of the peak, its descriptor (0.5
	// KiB), the poll descriptor of about one socket (0.6 KiB) and span and
	// GC metadata (~0.5 KiB at this heap size): 2 KiB, ~4 MiB at 2,100
	// goroutines. Besides, 2 MiB: code pages first touched under load
	// (~0.5 MiB), stacks cached and spans kept by a few live objects
	// (~0.5 MiB), threads started at the peak. The breakdown printed below
	// accounts for each.
	rssMargin := 2<<20 + 2<<10*int64(peakG)
	rssBound := base.rss + rssMargin
	back := func(m memory) bool {
		return m.goroutine <= base.goroutine+5 && m.heapInuse() <= base.heapInuse()+heapMargin && m.rss <= rssBound
	}
	var after memory
	settle := time.Now().Add(settleWait)
	for {
		// Wait on /proc, which costs sluice nothing, and scrape it only
		// when RSS is down: scraping twice a second would make it allocate
		// enough to collect now and then, so it would never look quiet.
		if procStatus(pid, "VmRSS")<<10 <= rssBound || time.Now().After(settle) {
			if after, err = readMemory(pid, adminAddr); err != nil {
				t.Fatalf("reading sluice's memory: %v", err)
			}
			if back(after) || time.Now().After(settle) {
				break
			}
		}
		time.Sleep(time.Second)
	}
	reloadLines := strings.Count(stderr.String(), "config reloaded")

	t.Logf("ran %v: %d reloads (%d confirmed in the log), %d upstream kills", *duration, reloads, reloadLines, kills)
	t.Logf("REST: %d ok, %d 502 (kills), %d other failures, %d hangs",
		c.restOK.Load(), c.rest502.Load(), c.restOther.Load(), c.restHang.Load())
	t.Logf("WebSocket: %d sessions opened, %d echoes, %d dropped with 1014 (kills), %d dropped without a close frame just after a kill, %d dropped otherwise, %d dials failed",
		c.wsOpened.Load(), c.wsEchoes.Load(), c.wsDropped1014.Load(), c.wsDroppedNearKill.Load(), c.wsDroppedOther.Load(), c.wsDialFailed.Load())
	t.Logf("sluice: goroutines %d -> peak %d -> %d after; RSS %d KiB -> peak %d KiB -> %d KiB after (bound %d KiB); heap in use %d KiB -> %d KiB after",
		base.goroutine, peakG, after.goroutine, base.rss>>10, peakRSS, after.rss>>10, rssBound>>10, base.heapInuse()>>10, after.heapInuse()>>10)
	t.Logf("after (%v after the load): %v", time.Since(loadEnd).Round(time.Second), after)
	t.Logf("after - baseline: %v", after.minus(base))
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
	if after.goroutine > base.goroutine+5 {
		t.Errorf("goroutines did not come back: %d at start, %d after", base.goroutine, after.goroutine)
	}
	if after.heapInuse() > base.heapInuse()+heapMargin {
		t.Errorf("heap did not come back within %v: %d KiB at start, %d KiB after, more than %d KiB over (1 KiB per peak goroutine + 2 MiB)",
			settleWait, base.heapInuse()>>10, after.heapInuse()>>10, heapMargin>>10)
	}
	if after.rss > rssBound {
		t.Errorf("RSS did not come back within %v: %d KiB at start, %d KiB after, more than %d KiB over (2 KiB per peak goroutine + 2 MiB)",
			settleWait, base.rss>>10, after.rss>>10, rssMargin>>10)
	}
}
