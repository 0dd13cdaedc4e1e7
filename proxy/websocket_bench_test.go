package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

// rawWSBackend is the least a WebSocket backend can be, so that a benchmark
// measures the proxy: it answers any upgrade with a fixed 101, echoes the
// client's close frame as its own, and hangs up.
func rawWSBackend(b *testing.B) net.Listener {
	const answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
	return rawUpstream(b, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) == 2 {
				break
			}
		}
		if _, err := io.WriteString(c, answer); err != nil {
			return
		}
		// A masked close frame with code 1000: 2 + 4 + 2 bytes.
		var f [8]byte
		if _, err := io.ReadFull(br, f[:]); err != nil {
			return
		}
		c.Write([]byte{0x88, 0x02, 0x03, 0xe8})
	})
}

// BenchmarkWebSocketHandshake measures one whole WebSocket session through
// the proxy, as the benchmark's handshake test does: connect, upgrade, close
// handshake, hang up. The backend and client are minimal, so allocs/op is
// mostly the proxy's.
func BenchmarkWebSocketHandshake(b *testing.B) {
	up := rawWSBackend(b)
	h := New(&config.Config{Routes: []config.Route{route("/", "http://"+up.Addr().String())}}, Options{})
	p := serveConns(b, h)
	addr := p.Listener.Addr().String()
	const req = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	closeFrame := []byte{0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 512)
		for pb.Next() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, req); err != nil {
				b.Error(err)
				c.Close()
				return
			}
			// The 101's head, then the close frame echoed.
			n := 0
			for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
				k, err := c.Read(buf[n:])
				if err != nil {
					b.Errorf("reading the 101: %v after %q", err, buf[:n])
					c.Close()
					return
				}
				n += k
			}
			if !bytes.HasPrefix(buf, []byte("HTTP/1.1 101 ")) {
				b.Errorf("answer %q", buf[:n])
				c.Close()
				return
			}
			head := bytes.Index(buf[:n], []byte("\r\n\r\n")) + 4
			rest := copy(buf, buf[head:n])
			if _, err := c.Write(closeFrame); err != nil {
				b.Error(err)
				c.Close()
				return
			}
			if rest < 4 {
				if _, err := io.ReadFull(c, buf[rest:4]); err != nil {
					b.Errorf("reading the close frame: %v", err)
					c.Close()
					return
				}
			}
			if !bytes.Equal(buf[:4], []byte{0x88, 0x02, 0x03, 0xe8}) {
				b.Errorf("close frame % x", buf[:4])
			}
			c.Close()
		}
	})
}
