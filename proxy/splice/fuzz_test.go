package splice

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// streamEnd is how a client byte stream ends, by the rules of RFC 6455.
type streamEnd int

const (
	endEOF     streamEnd = iota // the bytes run out
	endClose                    // a valid close frame
	endInvalid                  // a frame that breaks the protocol
)

// reference is a plain reading of a client byte stream, written apart from
// the session's parser to check it. It returns how many leading bytes the
// backend must receive verbatim, how the stream ends, and whether it ends
// inside a frame whose header was forwarded.
//
// The session forwards a frame's header as soon as it is complete, checked
// and followed by a payload byte (or has no payload), and its payload as it
// arrives; it holds back an incomplete header, a header whose payload has
// not begun, and a close frame until its two code bytes are there.
func reference(data []byte) (fwd int, end streamEnd, mid bool) {
	i, open := 0, false
	for {
		rest := data[i:]
		if len(rest) < 2 {
			return i, endEOF, false
		}
		fin, rsv, op := rest[0]&0x80 != 0, rest[0]>>4&7, rest[0]&0xf
		masked, n := rest[1]&0x80 != 0, uint64(rest[1]&0x7f)
		hl := 2
		if n == 126 {
			hl += 2
		} else if n == 127 {
			hl += 8
		}
		if masked {
			hl += 4
		}
		if len(rest) < hl {
			return i, endEOF, false
		}
		switch n {
		case 126:
			n = uint64(binary.BigEndian.Uint16(rest[2:]))
		case 127:
			n = binary.BigEndian.Uint64(rest[2:])
		}
		control := op >= 8
		switch {
		case n>>63 != 0,
			op >= 3 && op <= 7, op >= 0xb,
			control && (n > 125 || !fin),
			rsv != 0,
			!masked,
			op == opCont && !open,
			(op == opText || op == opBinary) && open,
			op == opClose && n == 1:
			return i, endInvalid, false
		}
		avail := uint64(len(rest) - hl)
		if op == opClose && n >= 2 {
			if avail < 2 {
				return i, endEOF, false
			}
			m := rest[hl-4 : hl]
			code := uint16(rest[hl]^m[0])<<8 | uint16(rest[hl+1]^m[1])
			valid := code >= 1000 && code <= 1003 || code >= 1007 && code <= 1014 || code >= 3000 && code <= 4999
			if !valid {
				return i, endInvalid, false
			}
		}
		if !control {
			open = !fin
		}
		if avail < n {
			if avail == 0 {
				return i, endEOF, false // the header waits for its payload
			}
			return len(data), endEOF, true
		}
		i += hl + int(n)
		if op == opClose {
			return i, endClose, false
		}
	}
}

// backendPeer reads everything the session sends to a backend, answers the
// first close frame with close 1000, and returns the raw bytes at EOF.
func backendPeer(c net.Conn) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		var raw bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &raw))
		answered := false
		for {
			var h [2]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				break
			}
			n := uint64(h[1] & 0x7f)
			ext := map[uint64]int{126: 2, 127: 8}[n]
			var e [8]byte
			if _, err := io.ReadFull(br, e[:ext]); err != nil {
				break
			}
			if ext == 2 {
				n = uint64(binary.BigEndian.Uint16(e[:]))
			} else if ext == 8 {
				n = binary.BigEndian.Uint64(e[:])
			}
			if h[1]&0x80 != 0 {
				if _, err := io.ReadFull(br, e[:4]); err != nil {
					break
				}
			}
			if _, err := io.CopyN(io.Discard, br, int64(min(n, 1<<62))); err != nil {
				break
			}
			if h[0]&0xf == opClose && !answered {
				answered = true
				c.Write(bframe(opClose, closeBody(1000, "")))
			}
		}
		io.Copy(&raw, c) // whatever is left, until EOF
		out <- raw.Bytes()
	}()
	return out
}

// FuzzSplice sends an arbitrary byte stream as the client and checks what the
// backend and the client get against reference: valid frames arrive byte for
// byte, a protocol violation gets the client close 1002 (and the backend
// 1001), and the session always ends.
func FuzzSplice(f *testing.F) {
	m := testMask
	seeds := [][]byte{
		nil,
		{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		cat(cframe(opText, []byte("hi")), cframe(opClose, closeBody(1000, "bye"))),
		cat(frame(false, 0, opText, m, []byte("a")), cframe(opPing, nil), frame(true, 0, opCont, m, []byte("b"))),
		cat(cframe(opBinary, payloadOf(300)), cframe(opPong, []byte("12345678"))),
		cframe(opBinary, payloadOf(70000))[:100],
		cframe(opClose, closeBody(1005, "")),
		cframe(opClose, []byte{3}),
		cframe(opClose, nil),
		cat(cframe(opText, nil), cframe(opClose, closeBody(1000, "x"))[:7]),
		bframe(opText, []byte("unmasked")),
		frame(true, 4, opText, m, []byte("rsv1")),
		cframe(opPing, payloadOf(126)),
		frame(true, 0, opCont, m, nil),
		{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4},
		{0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e'}, // non-minimal length
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, pc := unixPair(t)
		b, pb := unixPair(t)
		defer c.Close()
		defer b.Close()
		deadline := time.Now().Add(5 * time.Second)
		c.SetDeadline(deadline)
		b.SetDeadline(deadline)

		s := New(pc, nil, pb, nil, Options{})
		if *testQuiet > 0 {
			s.quiet = *testQuiet
		}
		done := make(chan Stats, 1)
		go func() { done <- s.Run(context.Background()) }()
		backend := backendPeer(b)
		clientGot := make(chan []byte, 1)
		go func() {
			got, _ := io.ReadAll(c)
			clientGot <- got
		}()
		werr := writeAsync(t, c, data, 0)
		<-werr // fails if the session stopped reading; the checks below tell
		c.(*net.UnixConn).CloseWrite()

		var st Stats
		select {
		case st = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("session did not end; input % x", trunc(data))
		}
		toBackend, toClient := <-backend, <-clientGot
		if took := time.Since(deadline.Add(-5 * time.Second)); took > 2*time.Second {
			// Every stream here ends at once: by a close handshake both
			// peers finish, or by EOF. Only the grace period may add a
			// second, and no input should need it.
			t.Fatalf("session took %v; input % x", took, trunc(data))
		}

		fwd, end, mid := reference(data)
		if !bytes.HasPrefix(toBackend, data[:fwd]) {
			t.Fatalf("backend got % x\nwant prefix % x (end %d)", trunc(toBackend), trunc(data[:fwd]), end)
		}
		extra := toBackend[fwd:]
		wantGoingAway := end == endInvalid || end == endEOF && !mid
		if wantGoingAway {
			f, err := tryReadFrame(bytes.NewReader(extra))
			if err != nil || f.op != opClose || !f.masked || len(f.payload) < 2 || binary.BigEndian.Uint16(f.payload) != 1001 {
				t.Fatalf("end %d: backend got % x after the valid bytes, want a masked close 1001", end, extra)
			}
		} else if len(extra) > 0 {
			t.Fatalf("end %d: backend got % x after the valid bytes, want nothing", end, trunc(extra))
		}

		switch end {
		case endInvalid:
			f, err := tryReadFrame(bytes.NewReader(toClient))
			if err != nil || f.op != opClose || f.masked || binary.BigEndian.Uint16(f.payload) != 1002 {
				t.Fatalf("client got % x, want close 1002", toClient)
			}
			if st.Reason != "protocol_error" || st.Err == nil {
				t.Fatalf("stats %+v, want a protocol error", st)
			}
		case endClose:
			if want := bframe(opClose, closeBody(1000, "")); !bytes.Equal(toClient, want) {
				t.Fatalf("client got % x, want the backend's close % x", toClient, want)
			}
			if st.ClosedBy != "client" || st.Err != nil {
				t.Fatalf("stats %+v, want closed by the client", st)
			}
		case endEOF:
			if len(toClient) > 0 {
				t.Fatalf("client got % x, want nothing", trunc(toClient))
			}
			if st.Reason != "client_gone" {
				t.Fatalf("stats %+v, want client_gone", st)
			}
		}
	})
}

// TestReference checks the fuzzer's oracle on the table cases.
func TestReference(t *testing.T) {
	ok := cframe(opText, []byte("ok"))
	for _, tt := range []struct {
		data []byte
		fwd  int
		end  streamEnd
		mid  bool
	}{
		{data: nil},
		{data: ok, fwd: len(ok)},
		{data: cat(ok, ok[:1]), fwd: len(ok)},
		{data: cat(ok, ok[:7]), fwd: len(ok) + 7, mid: true},
		{data: cat(ok, ok[:6]), fwd: len(ok)},
		{data: cat(ok, bframe(opText, nil)), fwd: len(ok), end: endInvalid},
		{data: cat(ok, cframe(opClose, nil), ok), fwd: 2*len(ok) - 2, end: endClose},
		{data: cframe(opClose, closeBody(1000, "x"))[:7]},
		{data: cframe(opClose, closeBody(1000, "x"))[:8], fwd: 8, mid: true},
		{data: cframe(opClose, closeBody(1006, "x"))[:8], end: endInvalid},
	} {
		fwd, end, mid := reference(tt.data)
		if fwd != tt.fwd || end != tt.end || mid != tt.mid {
			t.Errorf("reference(% x) = %d, %d, %v; want %d, %d, %v", tt.data, fwd, end, mid, tt.fwd, tt.end, tt.mid)
		}
	}
}
