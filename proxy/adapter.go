package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/proxy/h1"
)

// serveHandler serves the request in sc.req with an http.Handler, for what
// the HTTP/1 path leaves to net/http types: WebSocket handshakes (which
// hijack the connection), https upstreams, ACME challenges and redirects.
// It reports whether the connection can carry another request.
func (sc *serverConn) serveHandler(h http.Handler) bool {
	sc.adapted = true
	req := &sc.req
	target := string(req.Target)
	u, err := url.ParseRequestURI(target)
	if err != nil || string(req.Method) == "CONNECT" {
		x := &exchange{start: now(), method: string(req.Method), host: string(req.Host), path: target, remote: sc.peerIP}
		x.info.reason, x.info.err = "bad_request", err
		sc.writeError(x, 400, "malformed request target", true, "")
		return false
	}
	hdr := make(http.Header, len(req.Header))
	for _, f := range req.Header {
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		hdr[k] = append(hdr[k], string(f.Value))
	}
	host := string(req.Host)
	if u.Host != "" {
		host = u.Host
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := (&http.Request{
		Method:        string(req.Method),
		URL:           u,
		Proto:         "HTTP/1." + strconv.Itoa(req.Minor),
		ProtoMajor:    1,
		ProtoMinor:    req.Minor,
		Header:        hdr,
		Host:          host,
		RemoteAddr:    sc.c.RemoteAddr().String(),
		RequestURI:    target,
		TLS:           sc.tls,
		Close:         req.Close,
		ContentLength: req.ContentLength,
		Body:          http.NoBody,
	}).WithContext(ctx)
	sc.body.Reset(sc.br, req.ContentLength, req.Chunked)
	if req.Chunked {
		r.TransferEncoding = []string{"chunked"}
	}
	if !sc.bodyless() {
		r.Body = &adapterBody{sc: sc, continueFirst: req.Continue}
	}
	w := &adapterWriter{sc: sc, req: r, header: make(http.Header)}
	w.bw = writers.Get().(*bufio.Writer)
	w.bw.Reset(sc.c)
	defer func() {
		w.bw.Reset(nil)
		writers.Put(w.bw)
	}()
	h.ServeHTTP(w, r)
	if w.hijacked {
		return false
	}
	w.finish()
	return w.keep && sc.body.Done() && !sc.s.isClosing()
}

var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// adapterBody is the request body seen by a handler; it sends 100 Continue
// before the first read when the client waits for one.
type adapterBody struct {
	sc            *serverConn
	continueFirst bool
}

func (b *adapterBody) Read(p []byte) (int, error) {
	if b.continueFirst {
		b.continueFirst = false
		if _, err := b.sc.c.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			return 0, err
		}
	}
	return b.sc.body.Read(p)
}

func (b *adapterBody) Close() error { return nil }

// adapterWriter is the http.ResponseWriter of serveHandler: it frames the
// response by Content-Length when the handler set one, by chunked coding
// otherwise (by the connection's end for HTTP/1.0), and can be hijacked.
type adapterWriter struct {
	sc      *serverConn
	req     *http.Request
	header  http.Header
	bw      *bufio.Writer
	status  int
	chunked bool
	noBody  bool
	length  int64 // declared Content-Length; -1 = none
	written int64
	keep    bool

	hijacked bool
}

func (w *adapterWriter) Header() http.Header { return w.header }

func (w *adapterWriter) WriteHeader(code int) {
	if w.status != 0 || w.hijacked {
		return
	}
	sc := w.sc
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An interim answer (103 Early Hints): its fields go with it.
		b := h1.AppendStatusLine(sc.out[:0], code, nil)
		b = appendHeader(b, w.header)
		w.bw.Write(append(b, "\r\n"...))
		w.bw.Flush()
		return
	}
	w.status = code
	w.length = -1
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.length = n
		}
	}
	delete(w.header, "Transfer-Encoding")
	delete(w.header, "Connection")
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	w.keep = !w.req.Close
	switch {
	case w.noBody || w.length >= 0:
	case w.req.ProtoMinor == 1:
		w.chunked = true
	default:
		w.keep = false
	}
	if w.length < 0 {
		delete(w.header, "Content-Length")
	}
	b := h1.AppendStatusLine(sc.out[:0], code, nil)
	b = appendHeader(b, w.header)
	if _, ok := w.header["Date"]; !ok {
		b = append(b, "Date: "...)
		b = append(appendDate(b), "\r\n"...)
	}
	if sc.s.opts.ExtraHeader != nil {
		b = sc.s.opts.ExtraHeader(b)
	}
	if w.chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if !w.keep {
		b = append(b, "Connection: close\r\n"...)
	} else if w.req.ProtoMinor == 0 {
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	sc.out = b
	w.bw.Write(b)
}

func appendHeader(b []byte, h http.Header) []byte {
	for k, vs := range h {
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func (w *adapterWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		return len(p), nil
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	if w.chunked && len(p) > 0 {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		n, err := w.bw.Write(p)
		w.bw.WriteString("\r\n")
		w.written += int64(n)
		return n, err
	}
	n, err := w.bw.Write(p)
	w.written += int64(n)
	return n, err
}

// Flush sends what is buffered (http.Flusher), for streaming responses.
func (w *adapterWriter) Flush() {
	if w.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.bw.Flush()
}

// Hijack hands the connection over (http.Hijacker); the reader keeps what
// the client sent past the request head.
func (w *adapterWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if err := w.bw.Flush(); err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	w.sc.state.Store(connHijacked)
	c := underlying(w.sc.c)
	c.SetDeadline(time.Time{})
	return c, bufio.NewReadWriter(w.sc.br, bufio.NewWriter(c)), nil
}

// finish ends the response: the last chunk, or the connection's close when
// the body did not match its declared length.
func (w *adapterWriter) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked {
		w.bw.WriteString("0\r\n\r\n")
	}
	if w.length >= 0 && !w.noBody && w.written != w.length {
		w.keep = false
	}
	if err := w.bw.Flush(); err != nil {
		w.keep = false
	}
	// A request body the handler left unread: skip a little of it so the
	// connection can go on; more than that is not worth reading.
	if !w.sc.body.Done() {
		w.sc.c.SetReadDeadline(time.Now().Add(time.Second))
		defer w.sc.c.SetReadDeadline(time.Time{})
		if n, _ := io.CopyN(io.Discard, &w.sc.body, 256<<10); n == 256<<10 && !w.sc.body.Done() {
			w.keep = false
		}
	}
}

var _ http.Hijacker = (*adapterWriter)(nil)
