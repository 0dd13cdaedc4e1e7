package splice

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// BenchmarkSplice measures throughput through a session over loopback TCP:
// one Write of `batch` messages per iteration from one peer, read and
// counted by the other. At most a window of bytes is in flight, so the
// untimed tail after the loop is small.
func BenchmarkSplice(b *testing.B) {
	for _, dir := range []string{"c2b", "b2c"} {
		for _, bc := range []struct {
			name  string
			size  int
			batch int
		}{
			{"64B", 64, 1},
			{"64KiB", 64 << 10, 1},
			{"64Bx100", 64, 100},
		} {
			b.Run(dir+"/"+bc.name, func(b *testing.B) {
				msg := cframe(opBinary, payloadOf(bc.size))
				if dir == "b2c" {
					msg = bframe(opBinary, payloadOf(bc.size))
				}
				msg = bytes.Repeat(msg, bc.batch)
				benchSplice(b, dir, msg)
			})
		}
	}
}

func benchSplice(b *testing.B, dir string, msg []byte) {
	c, pc := tcpPair(b)
	bk, pb := tcpPair(b)
	s := New(pc, nil, pb, nil, Options{})
	done := make(chan Stats, 1)
	go func() { done <- s.Run(context.Background()) }()
	src, dst := c, bk
	if dir == "b2c" {
		src, dst = bk, c
	}

	var got atomic.Int64
	progress := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for {
			n, err := dst.Read(buf)
			got.Add(int64(n))
			select {
			case progress <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	const window = 1 << 20
	var sent int64
	waitFor := func(limit int64) {
		for sent-got.Load() > limit {
			<-progress
		}
	}

	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := src.Write(msg); err != nil {
			b.Fatal(err)
		}
		sent += int64(len(msg))
		waitFor(window)
	}
	waitFor(0)
	b.StopTimer()
	c.Close()
	bk.Close()
	<-done
}

// discardConn is a net.Conn that swallows writes, for benchmarking the state
// machine without sockets.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }
func (discardConn) Close() error                     { return nil }

// BenchmarkFeed measures the frame state machine alone: a 32 KiB read full
// of client frames of one size, parsed, checked and forwarded to a conn that
// discards. Steady state must not allocate.
func BenchmarkFeed(b *testing.B) {
	for _, size := range []int{16, 64, 1024, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			f := cframe(opBinary, payloadOf(size))
			chunk := bytes.Repeat(f, max(1, bufSize/len(f)))
			s := New(discardConn{}, nil, discardConn{}, nil, Options{MaxMessageSize: 1 << 20})
			s.start = time.Now()
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			for b.Loop() {
				s.feed(&s.c2b, chunk, s.start)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(chunk)/len(f)), "ns/frame")
		})
	}
}

// BenchmarkHeader measures reading and checking one frame header: the
// session's parseHeader and check, against gobwas/ws's ReadHeader and
// CheckHeader through a reader.
func BenchmarkHeader(b *testing.B) {
	hdr := cframe(opBinary, payloadOf(300))[:8]
	var sink int64
	b.Run("splice", func(b *testing.B) {
		d := dir{state: ws.StateServerSide}
		b.ReportAllocs()
		for b.Loop() {
			h, err := parseHeader(hdr)
			if err == nil {
				err = d.check(h)
			}
			if err != nil {
				b.Fatal(err)
			}
			sink += h.Length
		}
	})
	b.Run("gobwas-reader", func(b *testing.B) {
		r := bytes.NewReader(hdr)
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(hdr)
			h, err := ws.ReadHeader(r)
			if err == nil {
				err = ws.CheckHeader(h, ws.StateServerSide)
			}
			if err != nil {
				b.Fatal(err)
			}
			sink += h.Length
		}
	})
	_ = sink
}

// BenchmarkEcho measures one round trip of a 64-byte message through a
// session over loopback TCP: the client sends, the backend reads it and
// answers with a message of its own, the client reads that. Unlike
// BenchmarkSplice nothing is pipelined, so every message pays the full
// wake-up path of both directions, as an echo load does.
func BenchmarkEcho(b *testing.B) {
	c, pc := tcpPair(b)
	bk, pb := tcpPair(b)
	s := New(pc, nil, pb, nil, Options{})
	done := make(chan Stats, 1)
	go func() { done <- s.Run(context.Background()) }()
	in := cframe(opBinary, payloadOf(64))
	out := bframe(opBinary, payloadOf(64))
	buf := make([]byte, len(in))
	b.SetBytes(int64(len(in) + len(out)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(in); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(bk, buf[:len(in)]); err != nil {
			b.Fatal(err)
		}
		if _, err := bk.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:len(out)]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.Close()
	bk.Close()
	<-done
}
