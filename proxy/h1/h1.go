// Package h1 reads HTTP/1.1 messages off the wire for the proxy's hot path:
// request and response heads, parsed into fields that point into one reused
// buffer, and bodies framed by Content-Length, chunked coding or the end of
// the connection.
//
// Parsing is strict (RFC 9112). Anything that two parsers could frame
// differently is refused rather than guessed at: both Content-Length and
// Transfer-Encoding on a request, differing Content-Lengths, a coding other
// than chunked, obsolete line folding, whitespace before a colon, control
// characters in a value, a missing or repeated Host. The proxy re-frames
// every body it forwards, so an upstream never sees the client's framing
// and cannot be told a different story about where a request ends.
package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
)

// Field is one header line. Name and Value point into the head they were
// read with and are valid until the next head is read into it.
type Field struct{ Name, Value []byte }

// Header is the fields of a head in the order received.
type Header []Field

// Get returns the value of the first field named name (case-insensitive),
// or nil.
func (h Header) Get(name string) []byte {
	for i := range h {
		if equalFold(h[i].Name, name) {
			return h[i].Value
		}
	}
	return nil
}

// Has reports whether a field named name is present.
func (h Header) Has(name string) bool {
	for i := range h {
		if equalFold(h[i].Name, name) {
			return true
		}
	}
	return false
}

// HasToken reports whether any field named name holds token in its
// comma-separated list, case-insensitively.
func (h Header) HasToken(name, token string) bool {
	for i := range h {
		if equalFold(h[i].Name, name) && listHas(h[i].Value, token) {
			return true
		}
	}
	return false
}

// listHas reports whether the comma-separated list v contains token.
func listHas(v []byte, token string) bool {
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		if equalFold(trimOWS(item), token) {
			return true
		}
	}
	return false
}

// Error is a message the proxy refuses, with the status to answer it with
// and a short reason for the sender and the access log.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func badRequest(msg string) *Error { return &Error{Status: 400, Msg: msg} }

// ErrHeadTooLarge is returned when a head exceeds the caller's limit.
var ErrHeadTooLarge = &Error{Status: 431, Msg: "request header too large"}

// head is the storage shared by Request and Response: the head's bytes and
// the spans of its fields, reused from message to message.
type head struct {
	raw   []byte
	spans []span
}

type span struct{ ns, ne, vs, ve int32 }

// keepBytes bounds the storage a Reset message keeps: an unusually large
// head does not stay pinned in a pool.
const keepBytes = 8 << 10

// reset empties h, keeping its storage unless it grew past keepBytes.
func (h *head) reset() {
	if cap(h.raw) > keepBytes {
		*h = head{}
		return
	}
	h.raw, h.spans = h.raw[:0], h.spans[:0]
}

// resetHeader empties hdr, keeping its storage unless it is unusually long.
func resetHeader(hdr Header) Header {
	if cap(hdr) > keepBytes/32 {
		return nil
	}
	return hdr[:0]
}

// readHead reads lines up to the empty line that ends a head into h.raw,
// without line ends, and records each line after the first as a field
// span. It returns the first line's span [0, firstEnd).
func (h *head) readHead(br *bufio.Reader, max int) (firstEnd int, err error) {
	h.raw, h.spans = h.raw[:0], h.spans[:0]
	total := 0
	first := true
	for {
		start := len(h.raw)
		line, err := readLine(br, &h.raw, &total, max)
		if err != nil {
			if err == io.EOF && first && start == 0 && total == 0 {
				return 0, io.EOF
			}
			if err == io.EOF {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if first {
			if len(line) == 0 {
				// RFC 9112 2.2: ignore empty lines before the start line.
				if total > 4 {
					return 0, badRequest("malformed request line")
				}
				h.raw = h.raw[:start]
				continue
			}
			first = false
			firstEnd = len(h.raw)
			continue
		}
		if len(line) == 0 {
			return firstEnd, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return 0, badRequest("obsolete line folding in header")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return 0, badRequest("malformed header line")
		}
		if !validToken(line[:colon]) {
			return 0, badRequest("invalid header name")
		}
		v := trimOWS(line[colon+1:])
		if !validValue(v) {
			return 0, badRequest("invalid character in header value")
		}
		vs := start + colon + 1 + (len(line[colon+1:]) - len(trimLeftOWS(line[colon+1:])))
		h.spans = append(h.spans, span{int32(start), int32(start + colon), int32(vs), int32(vs + len(v))})
	}
}

// fields fills hdr from the spans, reusing its storage.
func (h *head) fields(hdr Header) Header {
	hdr = hdr[:0]
	for _, s := range h.spans {
		hdr = append(hdr, Field{Name: h.raw[s.ns:s.ne:s.ne], Value: h.raw[s.vs:s.ve:s.ve]})
	}
	return hdr
}

// readLine appends the next line, without its line end, to *raw and returns
// it. A bare CR inside the line is an error; total counts bytes read
// against max.
func readLine(br *bufio.Reader, raw *[]byte, total *int, max int) ([]byte, error) {
	start := len(*raw)
	for {
		chunk, err := br.ReadSlice('\n')
		*total += len(chunk)
		if *total > max {
			return nil, ErrHeadTooLarge
		}
		*raw = append(*raw, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if len(*raw) > start {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		break
	}
	line := (*raw)[start : len(*raw)-1] // drop '\n'
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, badRequest("bare CR in head")
	}
	*raw = (*raw)[:start+len(line)]
	return line, nil
}

// Request is a parsed request head. Its byte slices point into storage the
// Request reuses for the next head read into it.
type Request struct {
	Method []byte
	Target []byte
	Minor  int // 0 for HTTP/1.0, 1 for HTTP/1.1
	Header Header
	Host   []byte // the Host field's value; nil when absent (HTTP/1.0 only)

	// ContentLength is the length of the body; with Chunked it is -1.
	ContentLength int64
	Chunked       bool
	// Close says the client will not send another request on this
	// connection: Connection: close, or HTTP/1.0 without keep-alive.
	Close bool
	// Continue says the client waits for 100 Continue before its body.
	Continue bool

	h head
}

// Reset empties req for reuse on another connection. It keeps the storage
// the request grew, so that a reused Request reads a head without
// allocating.
func (req *Request) Reset() {
	req.h.reset()
	*req = Request{Header: resetHeader(req.Header), h: req.h}
}

// ReadRequest reads the next request head from br into req. The head,
// start line included, may be at most max bytes. It returns io.EOF when the
// connection ended cleanly before a request, an *Error for a request to
// refuse, or the read error.
func ReadRequest(br *bufio.Reader, req *Request, max int) error {
	firstEnd, err := req.h.readHead(br, max)
	if err != nil {
		return err
	}
	line := req.h.raw[:firstEnd:firstEnd]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	req.Method, req.Target = line[:sp1], rest[:sp2]
	if !validToken(req.Method) {
		return badRequest("invalid method")
	}
	for _, c := range req.Target {
		if c <= ' ' || c == 0x7f {
			return badRequest("invalid character in request target")
		}
	}
	minor, err := parseVersion(rest[sp2+1:])
	if err != nil {
		return err
	}
	req.Minor = minor
	req.Header = req.h.fields(req.Header)
	return req.frame()
}

func parseVersion(v []byte) (minor int, err error) {
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
		return 0, badRequest("malformed HTTP version")
	}
	if v[5] != '1' {
		return 0, &Error{Status: 505, Msg: "HTTP version not supported"}
	}
	if v[7] == '0' {
		return 0, nil
	}
	return 1, nil // HTTP/1.x, x > 1, is treated as 1.1 (RFC 9110 2.5)
}

// frame works out the request's body framing and connection handling from
// its fields, refusing what can be read two ways.
func (req *Request) frame() error {
	req.ContentLength, req.Chunked, req.Continue, req.Host = 0, false, false, nil
	var hosts, lengths int
	var te, closeTok, keepAlive bool
	for i := range req.Header {
		f := &req.Header[i]
		switch {
		case equalFold(f.Name, "Host"):
			hosts++
			if !validHost(f.Value) {
				return badRequest("invalid Host header")
			}
			req.Host = f.Value
		case equalFold(f.Name, "Content-Length"):
			n, ok := parseLength(f.Value)
			if !ok {
				return badRequest("invalid Content-Length")
			}
			if lengths > 0 && n != req.ContentLength {
				return badRequest("conflicting Content-Length headers")
			}
			lengths++
			req.ContentLength = n
		case equalFold(f.Name, "Transfer-Encoding"):
			if te {
				// Two fields would be one list; refusing is simpler
				// and nothing legitimate sends it.
				return badRequest("repeated Transfer-Encoding header")
			}
			te = true
			switch {
			case equalFold(trimOWS(f.Value), "chunked"):
			case !lastToken(f.Value, "chunked"):
				// Without chunked last, a request body has no end
				// (RFC 9112 6.3: 400, and close).
				return badRequest("transfer coding without chunked last")
			default:
				return &Error{Status: 501, Msg: "transfer coding not supported"}
			}
		case equalFold(f.Name, "Connection"):
			closeTok = closeTok || listHas(f.Value, "close")
			keepAlive = keepAlive || listHas(f.Value, "keep-alive")
		case equalFold(f.Name, "Expect"):
			if equalFold(trimOWS(f.Value), "100-continue") {
				req.Continue = true
			}
		}
	}
	switch {
	case hosts > 1:
		return badRequest("more than one Host header")
	case hosts == 0 && req.Minor == 1:
		return badRequest("missing Host header")
	case te && lengths > 0:
		// The classic smuggling vector (RFC 9112 6.1 allows a server to
		// refuse it, and a proxy should).
		return badRequest("both Transfer-Encoding and Content-Length")
	case te && req.Minor == 0:
		return badRequest("Transfer-Encoding in an HTTP/1.0 request")
	}
	if te {
		req.Chunked, req.ContentLength = true, -1
	}
	// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes
	// it unless asked to keep it.
	req.Close = closeTok || (req.Minor == 0 && !keepAlive)
	// An HTTP/1.0 client cannot be sent 1xx responses, so its expectation
	// is ignored (RFC 9110 10.1.1, 15.2): it sends its body anyway.
	req.Continue = req.Continue && req.Minor == 1
	return nil
}

// Response is a parsed response head, reusable like Request.
type Response struct {
	Status int
	Reason []byte
	Minor  int
	Header Header

	// Body framing, for the request method the response answers:
	// NoBody, or ContentLength >= 0, or Chunked, or neither (the body
	// runs to the end of the connection, ContentLength -1).
	NoBody        bool
	ContentLength int64
	Chunked       bool
	// Close says the connection cannot carry another exchange.
	Close bool

	h head
}

// ErrBadResponse wraps every malformed response head.
var ErrBadResponse = errors.New("malformed response from upstream")

// Reset empties resp for reuse, keeping its storage as Request.Reset does.
func (resp *Response) Reset() {
	resp.h.reset()
	*resp = Response{Header: resetHeader(resp.Header), h: resp.h}
}

// ReadResponse reads a response head for a request made with method (HEAD
// responses have no body) into resp.
func ReadResponse(br *bufio.Reader, resp *Response, method []byte, max int) error {
	firstEnd, err := resp.h.readHead(br, max)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return errors.Join(ErrBadResponse, err)
		}
		return err
	}
	line := resp.h.raw[:firstEnd:firstEnd]
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return ErrBadResponse
	}
	if string(line[:7]) != "HTTP/1." || !isDigit(line[7]) {
		return ErrBadResponse
	}
	resp.Minor = int(line[7] - '0')
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || code[0] == '0' {
		return ErrBadResponse
	}
	resp.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	resp.Reason = nil
	if len(line) > 13 {
		resp.Reason = line[13:]
	}
	resp.Header = resp.h.fields(resp.Header)
	return resp.frame(string(method) == "HEAD")
}

func (resp *Response) frame(head bool) error {
	resp.NoBody, resp.ContentLength, resp.Chunked = false, -1, false
	var lengths int
	var te, chunkedLast, closeTok, keepAlive bool
	for i := range resp.Header {
		f := &resp.Header[i]
		switch {
		case equalFold(f.Name, "Content-Length"):
			n, ok := parseLength(f.Value)
			if !ok || (lengths > 0 && n != resp.ContentLength) {
				return errors.Join(ErrBadResponse, errors.New("invalid or conflicting Content-Length"))
			}
			lengths++
			resp.ContentLength = n
		case equalFold(f.Name, "Transfer-Encoding"):
			te = true
			chunkedLast = lastToken(f.Value, "chunked")
		case equalFold(f.Name, "Connection"):
			closeTok = closeTok || listHas(f.Value, "close")
			keepAlive = keepAlive || listHas(f.Value, "keep-alive")
		}
	}
	resp.Close = closeTok || (resp.Minor == 0 && !keepAlive)
	if head || resp.Status < 200 || resp.Status == 204 || resp.Status == 304 {
		resp.NoBody = true
		return nil
	}
	if te {
		// RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and
		// such a connection must not be reused.
		if lengths > 0 {
			resp.Close = true
		}
		resp.ContentLength = -1
		if chunkedLast {
			resp.Chunked = true
		} else {
			resp.Close = true // framed by the end of the connection
		}
		return nil
	}
	if resp.ContentLength < 0 {
		resp.Close = true
	}
	return nil
}

// lastToken reports whether the last item of list v is token.
func lastToken(v []byte, token string) bool {
	if i := bytes.LastIndexByte(v, ','); i >= 0 {
		v = v[i+1:]
	}
	return equalFold(trimOWS(v), token)
}

// parseLength parses a Content-Length value: digits only, no sign, no
// overflow.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// AppendStatusLine appends "HTTP/1.1 <code> <reason>\r\n".
func AppendStatusLine(b []byte, code int, reason []byte) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if reason != nil {
		return append(append(b, reason...), "\r\n"...)
	}
	return append(append(b, http.StatusText(code)...), "\r\n"...)
}

// AppendField appends "name: value\r\n".
func AppendField(b []byte, name string, value []byte) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func trimOWS(b []byte) []byte {
	b = trimLeftOWS(b)
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func trimLeftOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// EqualFold is equalFold for callers outside the package.
func EqualFold(b []byte, s string) bool { return equalFold(b, s) }

// tokenChars marks the bytes allowed in a token (RFC 9110 5.6.2).
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func validToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

// validValue allows visible ASCII, space, tab and obs-text; no other
// control characters.
func validValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validHost allows the characters of an authority (RFC 3986 3.2): host,
// IP literal and port; no spaces, slashes or userinfo.
func validHost(b []byte) bool {
	for _, c := range b {
		switch {
		case tokenChars[c] && c != '|' && c != '`' && c != '^' && c != '#':
		case c == ':' || c == '[' || c == ']' || c == '(' || c == ')' || c == ',' || c == ';' || c == '=':
		default:
			return false
		}
	}
	return true
}
