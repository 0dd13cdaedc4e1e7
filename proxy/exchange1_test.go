package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

// readUntilClose reads c until the proxy closes it, failing the test if it
// does not within limit.
func readUntilClose(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("connection still open after %v (%v); read so far:\n%s", limit, err, b)
	}
	return string(b)
}

// TestErrorRepliesCloseWhenAsked checks the proxy's own answers (404,
// 502, 405) as a relayed one: a client that sent Connection: close, or an
// HTTP/1.0 client that did not ask to keep the connection, is answered and
// the connection closes; an HTTP/1.0 client that asked is told it stays.
func TestErrorRepliesCloseWhenAsked(t *testing.T) {
	down := freeAddr(t)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/down", "http://"+down)}})
	tests := []struct {
		name  string
		req   string
		want  []string // in order
		not   []string
		close bool // the proxy closes the connection after the answer
	}{
		{
			name:  "404 with Connection: close, a request behind it",
			req:   "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /nowhere2 HTTP/1.1\r\nHost: x\r\n\r\n",
			want:  []string{"HTTP/1.1 404 ", "Connection: close\r\n"},
			not:   []string{"nowhere2"},
			close: true,
		},
		{
			name:  "absolute form for an unknown host, HTTP/1.0",
			req:   "GET http://evil.example/ HTTP/1.0\r\n\r\n",
			want:  []string{"HTTP/1.1 404 ", "Connection: close\r\n"},
			close: true,
		},
		{
			name:  "502 to HTTP/1.0",
			req:   "GET /down/x HTTP/1.0\r\n\r\n",
			want:  []string{"HTTP/1.1 502 ", "Connection: close\r\n"},
			close: true,
		},
		{
			name:  "405 CONNECT with Connection: close",
			req:   "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nConnection: close\r\n\r\n",
			want:  []string{"HTTP/1.1 405 ", "Connection: close\r\n"},
			close: true,
		},
		{
			name: "HTTP/1.0 keep-alive is kept",
			req:  "GET /nowhere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
			want: []string{"HTTP/1.1 404 ", "Connection: keep-alive\r\n"},
			not:  []string{"Connection: close"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", p.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tt.req)
			var got string
			if tt.close {
				got = readUntilClose(t, c, 2*time.Second)
			} else {
				// The connection stays: read one answer, then make sure
				// nothing closes it at once.
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				var sb strings.Builder
				resp.Write(&sb)
				got = sb.String()
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := br.ReadByte(); !isTimeout(err) {
					t.Fatalf("connection did not stay open: %v", err)
				}
			}
			checkAnswer(t, got, tt.want, tt.not)
		})
	}
}

// TestNoContinueForHTTP10: an HTTP/1.0 client cannot be sent 1xx, so its
// Expect is ignored; it sends its body anyway.
func TestNoContinueForHTTP10(t *testing.T) {
	up := echoUpstream(t, "up")
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	got := rawExchange(t, p, "POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
	if strings.Contains(got, "100 Continue") || !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Fatalf("answer:\n%s", got)
	}
}

// streamingEchoUpstream answers a POST with a chunked response that
// streams back its body while it reads it, as a full-duplex service does.
func streamingEchoUpstream(t *testing.T) net.Listener {
	return rawUpstream(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		buf := make([]byte, 32<<10)
		for {
			n, err := req.Body.Read(buf)
			if n > 0 {
				fmt.Fprintf(c, "%x\r\n%s\r\n", n, buf[:n])
			}
			if err != nil {
				break
			}
		}
		io.WriteString(c, "0\r\n\r\n")
	})
}

// TestFullDuplexBody has an upstream that answers while it reads the
// body, and sends back what it reads: the proxy must keep sending the
// body while it relays the answer, not wait for one before the other.
func TestFullDuplexBody(t *testing.T) {
	up := streamingEchoUpstream(t)
	r := route("/", "http://"+up.Addr().String())
	r.MaxBody = 64 << 20
	p := startProxy(t, &config.Config{Routes: []config.Route{r}})
	const size = 16 << 20 // well past what socket buffers hold
	c, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	sent := make(chan error, 1)
	go func() {
		_, err := fmt.Fprintf(c, "POST /duplex HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
		if err == nil {
			_, err = io.Copy(c, io.LimitReader(newPattern(), size))
		}
		sent <- err
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("after %d bytes of the answer: %v", n, err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("sending the body: %v", err)
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(), size))
	if n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Fatalf("got %d bytes back, not the %d sent", n, size)
	}
	if rec := p.log.lastLog(t, "/duplex"); rec["bytes_in"] != float64(size) || rec["bytes_out"] != float64(size) {
		t.Fatalf("access log: bytes_in %v, bytes_out %v, want %d each", rec["bytes_in"], rec["bytes_out"], size)
	}
}

// sendBody sends a POST head and size bytes of body on c. Like curl, a
// client that is still sending learns of the answer only when it is done
// (or its send fails: curl then reports the reset, not the answer), so the
// early answers below must leave the send to complete.
func sendBody(c net.Conn, size int, chunk []byte) error {
	if _, err := fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size); err != nil {
		return err
	}
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

// TestEarlyAnswers: answers that come before the client has sent its whole
// body reach the client intact, and the close that follows reads what the
// client still sends rather than reset the connection under it.
func TestEarlyAnswers(t *testing.T) {
	tests := []struct {
		name       string
		upstream   func(c net.Conn, br *bufio.Reader) // after the request head
		maxBody    int64
		size       int
		wantStatus int
		wantBody   string // "" = not checked
	}{
		{
			name: "the upstream answers 413 and hangs up unread",
			upstream: func(c net.Conn, br *bufio.Reader) {
				io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
			},
			maxBody: 256 << 20, size: 32 << 20, wantStatus: 413, wantBody: "too large",
		},
		{
			name: "the upstream hangs up in the middle of the body",
			upstream: func(c net.Conn, br *bufio.Reader) {
				io.CopyN(io.Discard, br, 1<<20)
			},
			maxBody: 256 << 20, size: 16 << 20, wantStatus: 502,
		},
		{
			name: "sluice's own 413 for a Content-Length over max_body",
			// Were the request to go upstream, no answer would come.
			upstream: func(c net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) },
			maxBody:  1 << 10, size: 8 << 20, wantStatus: 413,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				tt.upstream(c, br)
			})
			r := route("/", "http://"+up.Addr().String())
			r.MaxBody = tt.maxBody
			p := startProxy(t, &config.Config{Routes: []config.Route{r}})
			chunk := make([]byte, 64<<10)
			for i := range 3 {
				c, err := net.Dial("tcp", p.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				sent := make(chan error, 1)
				go func() { sent <- sendBody(c, tt.size, chunk) }()
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					c.Close()
					t.Fatalf("attempt %d: %v", i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				serr := <-sent
				c.Close()
				if resp.StatusCode != tt.wantStatus || tt.wantBody != "" && string(b) != tt.wantBody {
					t.Fatalf("attempt %d: %d %q, want %d %q", i, resp.StatusCode, b, tt.wantStatus, tt.wantBody)
				}
				if serr != nil {
					t.Fatalf("attempt %d: sending the body: %v", i, serr)
				}
			}
		})
	}
}

// shortIOTimeout shortens ioTimeout for one test.
func shortIOTimeout(t *testing.T, d time.Duration) {
	old := ioTimeout.Load()
	ioTimeout.Store(int64(d))
	t.Cleanup(func() { ioTimeout.Store(old) })
}

// TestStalledTransfersEnd: a client whose body stalls gets 408, and an
// upstream that stops taking the body, or a client that stops taking the
// answer, does not hold either connection for good. Each case ends with
// the upstream's connection closed.
func TestStalledTransfersEnd(t *testing.T) {
	shortIOTimeout(t, 300*time.Millisecond)
	tests := []struct {
		name     string
		upstream func(c net.Conn, br *bufio.Reader) // after the request head
		client   func(t *testing.T, c net.Conn)
	}{
		{
			name: "client body stalls: 408",
			upstream: func(c net.Conn, br *bufio.Reader) {
				io.Copy(io.Discard, br)
			},
			client: func(t *testing.T, c net.Conn) {
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
				got := readUntilClose(t, c, 3*time.Second)
				if !strings.HasPrefix(got, "HTTP/1.1 408 ") {
					t.Fatalf("answer:\n%s", got)
				}
			},
		},
		{
			name: "upstream stops reading the body: 504",
			upstream: func(c net.Conn, br *bufio.Reader) {
				io.Copy(io.Discard, io.LimitReader(br, 1000))
				time.Sleep(3 * time.Second) // then the deferred close
			},
			client: func(t *testing.T, c net.Conn) {
				go func() {
					fmt.Fprintf(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 64<<20)
					chunk := make([]byte, 64<<10)
					for range 1024 {
						if _, err := c.Write(chunk); err != nil {
							return
						}
					}
				}()
				got := readUntilClose(t, c, 3*time.Second)
				if !strings.HasPrefix(got, "HTTP/1.1 504 ") {
					t.Fatalf("answer:\n%.200s", got)
				}
			},
		},
		{
			name: "client stops reading the answer",
			upstream: func(c net.Conn, br *bufio.Reader) {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
				chunk := make([]byte, 64<<10)
				for range 1 << 14 {
					c.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			},
			client: func(t *testing.T, c net.Conn) {
				io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
				// Read nothing; the upstream's end is what the test
				// waits for.
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ended := make(chan struct{})
			up := rawUpstream(t, func(c net.Conn) {
				defer close(ended)
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				tt.upstream(c, br)
			})
			r := route("/", "http://"+up.Addr().String())
			r.MaxBody = 1 << 30
			p := startProxy(t, &config.Config{Routes: []config.Route{r}})
			c, err := net.Dial("tcp", p.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetReadBuffer(4 << 10) // so that a client that does not read blocks soon
			}
			tt.client(t, c)
			select {
			case <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection is still in use after 5 s")
			}
		})
	}
}

// TestDateAdded: a response that comes without a Date gets one (RFC 9110
// 6.6.1), and one that has it keeps its own.
func TestDateAdded(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/dated" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Length: 2\r\n\r\nok")
			} else {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", "http://"+up.Addr().String())}})
	for path, want := range map[string]string{"/dated": "Mon, 02 Jan 2006 15:04:05 GMT", "/undated": ""} {
		resp, err := http.Get(p.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		dates := resp.Header.Values("Date")
		if len(dates) != 1 {
			t.Fatalf("%s: Date fields %q, want one", path, dates)
		}
		if want != "" && dates[0] != want {
			t.Fatalf("%s: Date %q, want the upstream's %q", path, dates[0], want)
		}
		if d, err := http.ParseTime(dates[0]); err != nil || want == "" && time.Since(d).Abs() > time.Minute {
			t.Fatalf("%s: Date %q (%v)", path, dates[0], err)
		}
	}
}

// TestShutdownCutIsLogged: a request still waiting for its upstream when
// the shutdown's grace runs out is logged as cut by the shutdown, not as a
// client that left.
func TestShutdownCutIsLogged(t *testing.T) {
	release := make(chan struct{})
	up := rawUpstream(t, func(c net.Conn) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		<-release
	})
	defer close(release)
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", "http://"+up.Addr().String())}})
	c, err := net.Dial("tcp", p.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(200 * time.Millisecond) // in the exchange, past the hang-up watch's start
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.cs.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the grace to run out", err)
	}
	if rec := p.log.lastLog(t, "/slow"); rec["error"] != "shutdown" {
		t.Fatalf("access log: %v, want error shutdown", rec)
	}
}
