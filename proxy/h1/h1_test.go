package h1

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		status  int // 0 = accepted
		length  int64
		chunked bool
		close   bool
	}{
		{name: "get", in: "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "bare LF", in: "GET / HTTP/1.1\nHost: x\n\n"},
		{name: "leading CRLF ignored", in: "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "post length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", length: 5},
		{name: "identical lengths", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", length: 5},
		{name: "chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", length: -1, chunked: true},
		{name: "close", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n", close: true},
		{name: "1.0 closes", in: "GET / HTTP/1.0\r\n\r\n", close: true},
		{name: "1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"},
		{name: "1.2 is 1.1", in: "GET / HTTP/1.2\r\nHost: x\r\n\r\n"},

		{name: "CL and TE", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "TE and CL", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", status: 400},
		{name: "differing lengths", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", status: 400},
		{name: "length list", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", status: 400},
		{name: "signed length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", status: 400},
		{name: "huge length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", status: 400},
		{name: "TE gzip", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", status: 400},
		{name: "TE gzip chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", status: 501},
		{name: "TE twice", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "TE with junk", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", status: 400},
		{name: "TE on 1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "space before colon", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n", status: 400},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", status: 400},
		{name: "bare CR", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n", status: 400},
		{name: "NUL in value", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n", status: 400},
		{name: "no host", in: "GET / HTTP/1.1\r\n\r\n", status: 400},
		{name: "two hosts", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400},
		{name: "bad host", in: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", status: 400},
		{name: "host with slash", in: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", status: 400},
		{name: "no version", in: "GET /\r\nHost: x\r\n\r\n", status: 400},
		{name: "two spaces", in: "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "HTTP/2 on the wire", in: "GET / HTTP/2.0\r\nHost: x\r\n\r\n", status: 505},
		{name: "lowercase version", in: "GET / http/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "bad method", in: "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "no colon", in: "GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", status: 400},
		{name: "empty name", in: "GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			err := ReadRequest(bufio.NewReader(strings.NewReader(tt.in)), &req, 1<<20)
			if tt.status != 0 {
				var e *Error
				if !errors.As(err, &e) || e.Status != tt.status {
					t.Fatalf("err = %v, want status %d", err, tt.status)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadRequest: %v", err)
			}
			if req.ContentLength != tt.length || req.Chunked != tt.chunked || req.Close != tt.close {
				t.Errorf("length %d chunked %v close %v, want %d %v %v", req.ContentLength, req.Chunked, req.Close, tt.length, tt.chunked, tt.close)
			}
		})
	}
}

func TestReadRequestFields(t *testing.T) {
	in := "PUT /p%20q?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nX-Empty:\r\nX-Pad: \t padded \t\r\nconnection: Upgrade\r\nUpgrade: websocket\r\nExpect: 100-Continue\r\n\r\nNEXT"
	br := bufio.NewReader(strings.NewReader(in))
	var req Request
	if err := ReadRequest(br, &req, 1<<20); err != nil {
		t.Fatal(err)
	}
	if string(req.Method) != "PUT" || string(req.Target) != "/p%20q?x=1" || req.Minor != 1 {
		t.Errorf("request line: %q %q 1.%d", req.Method, req.Target, req.Minor)
	}
	if string(req.Host) != "example.com:8080" {
		t.Errorf("host %q", req.Host)
	}
	if v := req.Header.Get("x-pad"); string(v) != "padded" {
		t.Errorf("X-Pad = %q", v)
	}
	if v := req.Header.Get("X-Empty"); v == nil || len(v) != 0 {
		t.Errorf("X-Empty = %q", v)
	}
	if !req.Header.HasToken("Connection", "upgrade") || !req.Header.HasToken("upgrade", "WebSocket") {
		t.Error("upgrade tokens not found")
	}
	if !req.Continue {
		t.Error("Expect: 100-continue not seen")
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "NEXT" {
		t.Errorf("left after head: %q", rest)
	}
}

func TestReadRequestLimits(t *testing.T) {
	var req Request
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n"
	err := ReadRequest(bufio.NewReaderSize(strings.NewReader(big), 16), &req, 4096)
	if err != ErrHeadTooLarge {
		t.Fatalf("err = %v, want ErrHeadTooLarge", err)
	}
	// Under the limit, a head larger than the reader's buffer is fine.
	if err := ReadRequest(bufio.NewReaderSize(strings.NewReader(big), 16), &req, 8192); err != nil {
		t.Fatal(err)
	}
	if len(req.Header.Get("X-Big")) != 5000 {
		t.Fatal("long value lost")
	}
	for in, want := range map[string]error{"": io.EOF, "GET / HT": io.ErrUnexpectedEOF, "GET / HTTP/1.1\r\nHost: x\r\n": io.ErrUnexpectedEOF} {
		if err := ReadRequest(bufio.NewReader(strings.NewReader(in)), &req, 1<<20); err != want {
			t.Errorf("%q: err = %v, want %v", in, err, want)
		}
	}
}

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		method  string
		bad     bool
		noBody  bool
		length  int64
		chunked bool
		close   bool
	}{
		{name: "length", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", length: 3},
		{name: "no reason", in: "HTTP/1.1 200\r\nContent-Length: 3\r\n\r\n", length: 3},
		{name: "empty reason", in: "HTTP/1.1 200 \r\nContent-Length: 3\r\n\r\n", length: 3},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", length: -1, chunked: true},
		{name: "TE beats CL", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", length: -1, chunked: true, close: true},
		{name: "until close", in: "HTTP/1.1 200 OK\r\n\r\n", length: -1, close: true},
		{name: "gzip coding", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", length: -1, close: true},
		{name: "head", method: "HEAD", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", noBody: true, length: 3},
		{name: "204", in: "HTTP/1.1 204 No Content\r\n\r\n", noBody: true, length: -1},
		{name: "304", in: "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", noBody: true, length: 9},
		{name: "1.0", in: "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", length: 3, close: true},
		{name: "1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n", length: 3},
		{name: "conflicting lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", bad: true},
		{name: "garbage", in: "HTTP/1.1 2x0 OK\r\n\r\n", bad: true},
		{name: "not http", in: "SSH-2.0-OpenSSH\r\n\r\n", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			var resp Response
			err := ReadResponse(bufio.NewReader(strings.NewReader(tt.in)), &resp, []byte(method), 1<<20)
			if tt.bad {
				if !errors.Is(err, ErrBadResponse) {
					t.Fatalf("err = %v, want ErrBadResponse", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.NoBody != tt.noBody || resp.ContentLength != tt.length || resp.Chunked != tt.chunked || resp.Close != tt.close {
				t.Errorf("noBody %v length %d chunked %v close %v, want %v %d %v %v",
					resp.NoBody, resp.ContentLength, resp.Chunked, resp.Close, tt.noBody, tt.length, tt.chunked, tt.close)
			}
		})
	}
}

func TestBody(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		length  int64
		chunked bool
		want    string
		err     error
		rest    string
	}{
		{name: "length", in: "helloNEXT", length: 5, want: "hello", rest: "NEXT"},
		{name: "empty", in: "NEXT", length: 0, want: "", rest: "NEXT"},
		{name: "short", in: "hel", length: 5, err: io.ErrUnexpectedEOF},
		{name: "until EOF", in: "all of it", length: -1, want: "all of it"},
		{name: "chunked", in: "5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\nNEXT", chunked: true, want: "hello!", rest: "NEXT"},
		{name: "chunked LF size line", in: "5\nhello\r\n0\n\nNEXT", chunked: true, want: "hello", rest: "NEXT"},
		{name: "chunked trailer", in: "A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT", chunked: true, want: "0123456789", rest: "NEXT"},
		{name: "chunk data too long", in: "2\r\nabc\r\n0\r\n\r\n", chunked: true, err: ErrBadChunk},
		{name: "chunk size junk", in: "2x\r\nab\r\n0\r\n\r\n", chunked: true, err: ErrBadChunk},
		{name: "chunk size negative", in: "-2\r\nab\r\n0\r\n\r\n", chunked: true, err: ErrBadChunk},
		{name: "chunk size overflow", in: "1000000000000000\r\n", chunked: true, err: ErrBadChunk},
		{name: "chunk cut", in: "5\r\nhel", chunked: true, err: io.ErrUnexpectedEOF},
		{name: "no last chunk", in: "5\r\nhello\r\n", chunked: true, err: io.ErrUnexpectedEOF},
		{name: "bad trailer", in: "0\r\nno colon\r\n\r\n", chunked: true, err: ErrBadChunk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), 16)
			var b Body
			b.Reset(br, tt.length, tt.chunked)
			got, err := io.ReadAll(&b)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want || !b.Done() {
				t.Fatalf("body %q done %v, want %q", got, b.Done(), tt.want)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tt.rest {
				t.Errorf("rest %q, want %q", rest, tt.rest)
			}
		})
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	f.Add("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	f.Add("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	f.Fuzz(func(t *testing.T, in string) {
		br := bufio.NewReaderSize(strings.NewReader(in), 16)
		var req Request
		if err := ReadRequest(br, &req, 4096); err != nil {
			return
		}
		if req.Chunked && req.ContentLength != -1 || !req.Chunked && req.ContentLength < 0 {
			t.Fatalf("framing inconsistent: chunked %v length %d", req.Chunked, req.ContentLength)
		}
		if req.Chunked && req.Header.Has("Content-Length") {
			t.Fatal("accepted both Content-Length and Transfer-Encoding")
		}
		var b Body
		b.Reset(br, req.ContentLength, req.Chunked)
		io.Copy(io.Discard, &b)
	})
}

func BenchmarkReadRequest(b *testing.B) {
	in := "GET /small HTTP/1.1\r\nHost: 127.0.0.1:18082\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Request-Id: 1234567890\r\n\r\n"
	r := strings.NewReader(in)
	br := bufio.NewReader(r)
	var req Request
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		r.Reset(in)
		br.Reset(r)
		if err := ReadRequest(br, &req, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}
