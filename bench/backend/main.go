//go:build linux

// Command backend is the upstream of the sluice benchmark (bench/run.sh): a
// REST endpoint with a small and a 1 MiB answer, and a WebSocket echo. It is
// the same process for the direct, nginx and sluice measurements, so the
// three differ only by the proxy in the middle.
//
//	GET /small  a 13-byte text body
//	GET /1m     1 MiB of bytes (Content-Length set)
//	GET /ws     WebSocket upgrade; every data frame is echoed back as it came
//	            (opcode, fin, payload), pings get pongs, a close gets a close
//
// It listens on loopback only and stops on SIGTERM or SIGINT.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// maxPayload bounds the frames the echo accepts; the benchmark sends at most
// 64 KiB.
const maxPayload = 1 << 20

var (
	smallBody = []byte("hello, bench\n")
	bigBody   = make([]byte, 1<<20)
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen `address` (loopback)")
	flag.Parse()
	raiseNoFile()
	for i := range bigBody {
		bigBody[i] = byte('a' + i%26)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{strconv.Itoa(len(smallBody))}
		w.Write(smallBody)
	})
	mux.HandleFunc("GET /1m", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{strconv.Itoa(len(bigBody))}
		w.Write(bigBody)
	})
	mux.HandleFunc("GET /ws", echo)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		os.Exit(0)
	}()
	fmt.Printf("backend listening on %s\n", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("backend: %v", err)
	}
}

// echo upgrades the request and echoes frames until the peer closes.
func echo(w http.ResponseWriter, r *http.Request) {
	conn, rw, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return
	}
	defer conn.Close()
	br := rw.Reader
	bw := bufio.NewWriterSize(conn, 16<<10)
	hdr := make([]byte, ws.MaxHeaderSize)
	var buf []byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		if h.Length > maxPayload {
			return
		}
		n := int(h.Length)
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		p := buf[:n]
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
			h.Masked = false
		}
		switch h.OpCode {
		case ws.OpClose:
			h.Fin = true
			writeFrame(bw, hdr, h, p)
			return
		case ws.OpPing:
			h.OpCode = ws.OpPong
		case ws.OpPong:
			continue
		}
		if err := writeFrame(bw, hdr, h, p); err != nil {
			return
		}
	}
}

func writeFrame(bw *bufio.Writer, hdr []byte, h ws.Header, p []byte) error {
	if err := ws.WriteHeaderBuffer(bw, h, hdr); err != nil {
		return err
	}
	if _, err := bw.Write(p); err != nil {
		return err
	}
	return bw.Flush()
}

// raiseNoFile lifts the soft open-file limit to the hard one: 10,000 idle
// WebSocket sessions need 10,000 descriptors here. (Go does this itself since
// 1.19; doing it again costs nothing and says so.)
func raiseNoFile() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
