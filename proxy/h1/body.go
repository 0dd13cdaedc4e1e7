package h1

import (
	"bufio"
	"errors"
	"io"
)

// ErrBadChunk is returned for malformed chunked coding.
var ErrBadChunk = errors.New("malformed chunked encoding")

// maxChunkLine bounds a chunk-size line and each trailer line; the trailer
// section as a whole is bounded by maxTrailer.
const (
	maxChunkLine = 4 << 10
	maxTrailer   = 64 << 10
)

// Body reads one message body from the connection's reader: a fixed length,
// chunked coding (decoded: Read returns the payload), or everything up to
// the end of the connection. Trailer fields are read and dropped. The zero
// Body is empty.
type Body struct {
	br      *bufio.Reader
	left    int64 // bytes left in the body (length) or the current chunk
	mode    uint8
	state   uint8 // chunked: what comes next
	done    bool
	err     error
	scratch []byte
}

const (
	modeLength = iota
	modeChunked
	modeUntilEOF
)

const (
	chunkSize  = iota // a chunk-size line
	chunkData         // left bytes of data
	chunkCRLF         // the CRLF after the data
	chunkTrail        // trailer lines up to the empty line
)

// Reset makes b read a body from br: length bytes (length >= 0), chunked,
// or, with length < 0 and !chunked, up to the end of the connection.
func (b *Body) Reset(br *bufio.Reader, length int64, chunked bool) {
	*b = Body{br: br, scratch: b.scratch}
	switch {
	case chunked:
		b.mode, b.state = modeChunked, chunkSize
	case length >= 0:
		b.mode, b.left = modeLength, length
		b.done = length == 0
	default:
		b.mode = modeUntilEOF
	}
}

// Done reports whether the body was read to its end, so that the
// connection is positioned at the next message.
func (b *Body) Done() bool { return b.done }

// Remaining returns the number of bytes a fixed-length body still has, or
// -1 for other framings.
func (b *Body) Remaining() int64 {
	if b.mode != modeLength {
		return -1
	}
	return b.left
}

// Read reads payload bytes. It returns io.EOF at the end of the body, and
// io.ErrUnexpectedEOF when the connection ends before it.
func (b *Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch b.mode {
	case modeLength:
		n, err := b.readLeft(p)
		if b.left == 0 {
			b.done = true
			return n, io.EOF
		}
		b.err = err
		return n, err
	case modeUntilEOF:
		n, err := b.br.Read(p)
		if err == io.EOF {
			b.done = true
		} else {
			b.err = err
		}
		return n, err
	}
	return b.readChunked(p)
}

func (b *Body) readChunked(p []byte) (int, error) {
	for {
		switch b.state {
		case chunkSize:
			line, err := b.line()
			if err != nil {
				return 0, b.fail(err)
			}
			size, ok := parseChunkSize(line)
			if !ok {
				return 0, b.fail(ErrBadChunk)
			}
			if size == 0 {
				b.state, b.left = chunkTrail, 0
				continue
			}
			b.state, b.left = chunkData, size
		case chunkData:
			n, err := b.readLeft(p)
			if b.left == 0 {
				b.state = chunkCRLF
			}
			if err != nil {
				return n, b.fail(err)
			}
			return n, nil
		case chunkCRLF:
			c1, err := b.br.ReadByte()
			if err != nil {
				return 0, b.fail(err)
			}
			c2, err := b.br.ReadByte()
			if err != nil {
				return 0, b.fail(err)
			}
			if c1 != '\r' || c2 != '\n' {
				return 0, b.fail(ErrBadChunk)
			}
			b.state = chunkSize
		case chunkTrail:
			// Trailer fields are dropped; they must still be well formed
			// and end with an empty line.
			line, err := b.line()
			if err != nil {
				return 0, b.fail(err)
			}
			if len(line) == 0 {
				b.done = true
				return 0, io.EOF
			}
			if b.left += int64(len(line)); b.left > maxTrailer {
				return 0, b.fail(ErrBadChunk)
			}
			if c := line[0]; c == ' ' || c == '\t' {
				return 0, b.fail(ErrBadChunk)
			}
			colon := indexByte(line, ':')
			if colon <= 0 || !validToken(line[:colon]) || !validValue(line[colon+1:]) {
				return 0, b.fail(ErrBadChunk)
			}
		}
	}
}

// readLeft reads at most the b.left bytes still due (of the body or of
// the chunk); the connection ending first is io.ErrUnexpectedEOF.
func (b *Body) readLeft(p []byte) (int, error) {
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *Body) fail(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	b.err = err
	return err
}

// line reads one line of chunked framing, without its line end.
func (b *Body) line() ([]byte, error) {
	b.scratch = b.scratch[:0]
	total := 0
	line, err := readLine(b.br, &b.scratch, &total, maxChunkLine)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, ErrBadChunk
		}
		return nil, err
	}
	return line, nil
}

// parseChunkSize parses "hex [BWS ; ext]".
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false // more than 15 hex digits could overflow
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := trimLeftOWS(line[i:])
	if len(rest) > 0 && (rest[0] != ';' || !validValue(rest)) {
		return 0, false
	}
	return n, true
}

func indexByte(b []byte, c byte) int {
	for i := range b {
		if b[i] == c {
			return i
		}
	}
	return -1
}
