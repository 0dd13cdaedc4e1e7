//go:build linux

// Command wsload is the WebSocket load generator of the sluice benchmark
// (bench/run.sh). It speaks to bench/backend's echo, directly or through a
// proxy, in one of three modes, and prints one line of key=value results:
//
//	echo       -c connections each send one message of -size bytes and wait
//	           for its echo, in a loop, for -d. Prints msgs, msg_per_s,
//	           mb_per_s (payload bytes echoed, counted once, 10^6 bytes) and
//	           RTT percentiles in microseconds.
//	handshake  -c workers each connect, upgrade, send a close frame, wait for
//	           the close reply (unless -wait-close=false) and hang up, in a
//	           loop, for -d. Prints handshakes and hs_per_s.
//	idle       open -n sessions with -c dialers, write -ready FILE, then hold
//	           them without traffic until SIGTERM/SIGINT or -hold has passed.
//
// Every loop is bounded by -d (or -hold) and every I/O by a deadline, so a
// stuck proxy cannot hang the benchmark. Only loopback addresses are
// accepted.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// ioTimeout bounds any single handshake or read/write wait.
const ioTimeout = 10 * time.Second

func main() {
	var (
		target = flag.String("url", "ws://127.0.0.1:18080/ws", "WebSocket `URL` (loopback only)")
		mode   = flag.String("mode", "echo", "echo | handshake | idle")
		conc   = flag.Int("c", 50, "connections (echo), workers (handshake) or dialers (idle)")
		size   = flag.Int("size", 64, "message payload `bytes` (echo)")
		dur    = flag.Duration("d", 10*time.Second, "duration (echo, handshake)")
		n      = flag.Int("n", 10000, "sessions to open (idle)")
		ready  = flag.String("ready", "", "`file` written once the idle sessions are open")
		hold   = flag.Duration("hold", 2*time.Minute, "longest time to hold idle sessions")
		srcs   = flag.String("src", "", "comma-separated loopback source `IPs` to spread connections over (default: the kernel's choice)")
		wait   = flag.Bool("wait-close", true, "handshake: wait for the close reply before hanging up")
	)
	flag.Parse()
	if err := checkLoopback(*target); err != nil {
		fail(err)
	}
	raiseNoFile()
	d, err := newDialer(*srcs)
	if err != nil {
		fail(err)
	}
	switch *mode {
	case "echo":
		if *conc < 1 || *size < 1 || *size > 1<<20 {
			fail(errors.New("echo needs -c >= 1 and 1 <= -size <= 1MiB"))
		}
		err = runEcho(d, *target, *conc, *size, *dur)
	case "handshake":
		err = runHandshakes(d, *target, max(*conc, 1), *dur, *wait)
	case "idle":
		err = runIdle(d, *target, *n, max(*conc, 1), *ready, *hold)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "wsload:", err)
	os.Exit(1)
}

func checkLoopback(target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	ips, err := net.LookupIP(u.Hostname())
	if err != nil {
		return err
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("%q is not a loopback address", u.Host)
		}
	}
	return nil
}

// dialer hands out connections from a rotating set of loopback source
// addresses, so that many connections do not exhaust the ephemeral ports of
// one address.
type dialer struct {
	srcs []net.IP
	next atomic.Uint32
}

func newDialer(list string) (*dialer, error) {
	d := &dialer{}
	for s := range strings.SplitSeq(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("source %q is not a loopback IP", s)
		}
		d.srcs = append(d.srcs, ip)
	}
	return d, nil
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux): pick the local
// port at connect time, per destination, not at bind time.
const ipBindAddressNoPort = 0x18

func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: ioTimeout}
	if len(d.srcs) > 0 {
		ip := d.srcs[int(d.next.Add(1))%len(d.srcs)]
		nd.LocalAddr = &net.TCPAddr{IP: ip}
		nd.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
		}
	}
	return nd.DialContext(ctx, network, addr)
}

// connect opens one WebSocket session and returns it with a reader that
// holds anything the server sent after its 101.
func (d *dialer) connect(target string) (net.Conn, *bufio.Reader, error) {
	wd := ws.Dialer{Timeout: ioTimeout, NetDial: d.dial}
	conn, br, _, err := wd.Dial(context.Background(), target)
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, 4096)
	}
	return conn, br, nil
}

// runEcho measures message rate and round-trip time with conc connections,
// each with one message in flight.
func runEcho(d *dialer, target string, conc, size int, dur time.Duration) error {
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	conns := make([]conn, conc)
	for i := range conns {
		c, br, err := d.connect(target)
		if err != nil {
			return fmt.Errorf("connecting session %d: %w", i, err)
		}
		defer c.Close()
		conns[i] = conn{c, br}
	}
	// One frame, masked once: the proxies do not look at the payload.
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	mask := ws.NewMask()
	ws.Cipher(payload, mask, 0)
	frame := ws.MustCompileFrame(ws.Frame{
		Header:  ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Mask: mask, Length: int64(size)},
		Payload: payload,
	})

	hists := make([]histogram, conc)
	counts := make([]int64, conc)
	errs := make([]error, conc)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for i := range conns {
		wg.Go(func() {
			c, br, h := conns[i].c, conns[i].br, &hists[i]
			c.SetDeadline(end.Add(ioTimeout))
			buf := make([]byte, size)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				if _, err := c.Write(frame); err != nil {
					errs[i] = err
					return
				}
				hd, err := ws.ReadHeader(br)
				if err != nil {
					errs[i] = err
					return
				}
				if hd.OpCode != ws.OpBinary || hd.Length != int64(size) {
					errs[i] = fmt.Errorf("echo came back as opcode %d with %d bytes, want binary with %d", hd.OpCode, hd.Length, size)
					return
				}
				if _, err := io.ReadFull(br, buf); err != nil {
					errs[i] = err
					return
				}
				h.add(uint64(time.Since(t0).Nanoseconds()))
				counts[i]++
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var total int64
	var all histogram
	for i := range conns {
		total += counts[i]
		all.merge(&hists[i])
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("echo after %d messages: %w", total, err)
	}
	fmt.Printf("mode=echo conns=%d size=%d secs=%.3f msgs=%d msg_per_s=%.1f mb_per_s=%.2f p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f\n",
		conc, size, elapsed, total, float64(total)/elapsed, float64(total)*float64(size)/elapsed/1e6,
		all.quantile(0.50)/1e3, all.quantile(0.90)/1e3, all.quantile(0.99)/1e3, all.quantile(1)/1e3)
	return nil
}

// closeFrame is a masked close frame with code 1000.
var closeFrame = ws.MustCompileFrame(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))

// runHandshakes measures full session setups and teardowns per second.
func runHandshakes(d *dialer, target string, workers int, dur time.Duration, wait bool) error {
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for range workers {
		wg.Go(func() {
			for time.Now().Before(end) {
				if err := handshakeOnce(d, target, wait); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	fmt.Printf("mode=handshake workers=%d wait_close=%t secs=%.3f handshakes=%d hs_per_s=%.1f errors=%d\n",
		workers, wait, elapsed, ok.Load(), float64(ok.Load())/elapsed, failed.Load())
	if failed.Load() > 0 {
		fmt.Fprintln(os.Stderr, "wsload: first handshake error:", firstErr.Load())
	}
	return nil
}

func handshakeOnce(d *dialer, target string, wait bool) error {
	c, br, err := d.connect(target)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(closeFrame); err != nil {
		return err
	}
	if !wait {
		return nil
	}
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return fmt.Errorf("waiting for the close reply: %w", err)
		}
		if _, err := br.Discard(int(h.Length)); err != nil {
			return err
		}
		if h.OpCode == ws.OpClose {
			return nil
		}
	}
}

// runIdle opens n sessions and holds them without traffic.
func runIdle(d *dialer, target string, n, dialers int, ready string, hold time.Duration) error {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	errs := make([]error, dialers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range dialers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, _, err := d.connect(target)
				if err != nil {
					errs[w] = fmt.Errorf("session %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("opening %d idle sessions: %w", n, err)
	}
	fmt.Printf("mode=idle sessions=%d open_secs=%.3f\n", n, time.Since(start).Seconds())
	if ready != "" {
		if err := os.WriteFile(ready, fmt.Appendf(nil, "%d\n", n), 0o644); err != nil {
			return err
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sigs:
	case <-time.After(hold):
	}
	return nil
}

// histogram records nanosecond values in log-linear buckets: exact below
// 128, then 64 buckets per power of two (within 1.6%).
type histogram struct {
	b [64 * 59]uint64
	n uint64
}

func bucket(v uint64) int {
	if v < 128 {
		return int(v)
	}
	e := bits.Len64(v) - 7
	return 64*(e+1) + int(v>>e) - 64
}

// value returns the middle of bucket i.
func value(i int) float64 {
	if i < 128 {
		return float64(i)
	}
	e := i/64 - 1
	lo := uint64(i%64+64) << e
	return float64(lo) + float64(uint64(1)<<e)/2
}

func (h *histogram) add(v uint64) { h.b[bucket(v)]++; h.n++ }

func (h *histogram) merge(o *histogram) {
	for i, c := range o.b {
		h.b[i] += c
	}
	h.n += o.n
}

// quantile returns the value at quantile q (0..1); 0 when empty.
func (h *histogram) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.b {
		seen += c
		if seen >= rank {
			return value(i)
		}
	}
	return 0
}

// raiseNoFile lifts the soft open-file limit to the hard one: 10,000 idle
// sessions need 10,000 descriptors here.
func raiseNoFile() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
