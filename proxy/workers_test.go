package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/config"
)

// waitIdleWorkers waits until cs has want idle workers.
func waitIdleWorkers(t *testing.T, cs *ConnServer, want int32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); cs.workers.idle.Load() != want; {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle workers, want %d", cs.workers.idle.Load(), want)
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
}

// getOnNewConn makes one request on a connection of its own and checks
// the answer.
func getOnNewConn(t *testing.T, addr, path string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != path {
		t.Fatalf("GET %s: %d %q", path, resp.StatusCode, b)
	}
}

// TestWorkersReused checks that connections one after another are served
// by one goroutine that waits between them, that no more than
// maxIdleWorkers wait after a burst, and that the waiting ones end when the
// server closes.
func TestWorkersReused(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}))
	defer up.Close()
	p := startProxy(t, &config.Config{Routes: []config.Route{route("/", up.URL)}})
	addr := p.Listener.Addr().String()
	cs := p.cs

	for i := range 20 {
		getOnNewConn(t, addr, fmt.Sprintf("/seq/%d", i))
		// The connection's worker waits for the next one.
		waitIdleWorkers(t, cs, 1)
	}

	// A burst of connections at once: each may get a worker, and at
	// most maxIdleWorkers of them stay.
	const burst = 3 * maxIdleWorkers
	var wg sync.WaitGroup
	conns := make([]net.Conn, burst)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	for i, c := range conns {
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "GET /burst/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", i)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
		})
	}
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; {
		cs.mu.Lock()
		n := len(cs.conns)
		cs.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still tracked", n)
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
	if n := cs.workers.idle.Load(); n < 1 || n > maxIdleWorkers {
		t.Errorf("%d idle workers after a burst of %d connections, want 1..%d", n, burst, maxIdleWorkers)
	}

	p.Close()
	waitIdleWorkers(t, cs, 0)
}
