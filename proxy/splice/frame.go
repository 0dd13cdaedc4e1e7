package splice

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// bufSize is the size of the pooled read buffers. Payload longer than this
// streams through in pieces; nothing is ever sized by a length the peer
// claims.
const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// rsv1 is RSV1 in ws.Header.Rsv, the bit permessage-deflate uses.
const rsv1 = 0x4

// Protocol errors beyond ws.CheckHeader's.
var (
	errRSV         = ws.ProtocolError("rsv bit other than rsv1 on the first frame of a data message")
	errCloseLength = ws.ProtocolError("close frame with a one-byte payload")
	errCloseCode   = ws.ProtocolError("close frame with an invalid status code")
)

// action says what happens to the current frame.
type action uint8

const (
	actForward action = iota // its header went, or is going, to dst; its payload follows
	actDrop                  // it does not go to dst
	actHold                  // its header and first holdN payload bytes wait in hold for a decision (or for the first payload byte)
)

// hangup is what readiness reports said of a source's end, in the order
// of how much must still be read to find it (see hangupOf).
type hangup uint8

const (
	hupNone   hangup = iota // no end reported
	hupFIN                  // the peer's FIN came, with no error behind it
	hupFailed               // an error came: read until a read returns it
)

// dir is one direction of a session: src's frames go to dst. It is a parser
// that knows where it stands in src's frame stream, what the open message has
// cost, and whether dst's stream is inside a frame. It holds no buffer: only a
// header split between two reads, or the first bytes of a control frame under
// inspection (a close code, a pong that may answer the proxy's ping).
//
// The state is here, not on a goroutine's stack, so that feed can be driven by
// anything that has bytes from src: on Linux a goroutine while src is busy and
// none while it is quiet (see poll_linux.go), elsewhere, and for sources
// without a socket, a goroutine per direction that lives as long as it.
type dir struct {
	src, dst *peer
	state    ws.State              // how src's frames are checked; StateFragmented comes from msgOpen
	pre      []byte                // bytes read before the session began, handled first
	readCap  int                   // read at most this much at once; 0 = a whole buffer
	readyFn  func(fd uintptr) bool // the readiness probe pump waits with; made when d starts
	token    uint64                // the poller's registration; 0 = never parked
	ev       atomic.Int32          // the hybrid driver's state (evNone and so on)
	rdl      int64                 // src's read deadline (the end of the quiet period), in nanoseconds since Start; 0 = none
	seen     int64                 // bytes when the quiet period began

	h            ws.Header // current frame
	remain       int64     // its payload bytes still to come
	msgSize      int64     // payload bytes of the open message so far (with MaxMessageSize)
	act          action
	holdN        uint8 // payload bytes to hold (actHold)
	hn           uint8 // bytes in hold
	hlen         uint8 // length of the header in hold
	msgOpen      bool  // a fragmented data message is open
	dstMid       bool  // dst's stream is inside a frame forwarded from here
	drain        bool  // src's stream is over or broken: read and discard
	chargeChunks bool  // the current frame's payload is charged to the byte bucket as it arrives
	hold         [ws.MaxHeaderSize + pingLen]byte
	peek         [1]byte // readiness probe target
	hup          hangup  // inline: what the reports said of src's end
	rbuf         *[]byte // what readInto read into, for pump; nil = nothing
	rn           int     // bytes readInto read
	rerr         error   // and the error it met (io.EOF at the end)

	// frames and bytes are read by Session.Counts while the direction
	// runs, hence atomic.
	frames, bytes atomic.Int64
	limitHits     int64
	closeCode     int
}

func (d *dir) init(src, dst *peer, pre []byte, st ws.State) {
	d.src, d.dst, d.pre, d.state = src, dst, pre, st
}

// cursor walks one chunk of bytes read from src. p[run:i] are bytes to be
// forwarded verbatim that have not been written yet; they are written in one
// go when something else has to happen (a frame to drop or hold, a wait, the
// end of the chunk).
type cursor struct {
	p      []byte
	i, run int
	now    time.Time
}

// feed handles a chunk of bytes from d's source.
func (s *Session) feed(d *dir, p []byte, now time.Time) {
	c := cursor{p: p, now: now}
	for c.i < len(p) && !d.drain {
		if d.remain > 0 {
			s.payload(d, &c)
		} else {
			s.header(d, &c)
		}
	}
	s.flush(d, &c, c.i, false)
}

// flush forwards c.p[c.run:end].
func (s *Session) flush(d *dir, c *cursor, end int, closes bool) {
	if c.run < end {
		s.forward(d, c.p[c.run:end], closes, c.now)
	}
	c.run = end
}

func (s *Session) forward(d *dir, b []byte, closes bool, now time.Time) {
	s.lastActive.Store(int64(now.Sub(s.start)))
	s.send(d.dst, b, !d.dstMid, closes, now)
}

// header reads, checks and decides on a frame header at c.i.
func (s *Session) header(d *dir, c *cursor) {
	hs := c.i
	var hb []byte
	if d.hn == 0 && len(c.p)-hs >= 2 {
		if n := headerLen(c.p[hs], c.p[hs+1]); len(c.p)-hs >= n {
			hb = c.p[hs : hs+n]
		}
	}
	inHold := hb == nil
	if inHold {
		// The header is split between reads: gather it in hold.
		if d.hn == 0 {
			s.flush(d, c, hs, false)
		}
		n, ok := d.fillHeader(c.p[c.i:])
		c.i += n
		c.run = c.i
		if !ok {
			return
		}
		hb = d.hold[:d.hn]
	} else {
		c.i += len(hb)
	}
	d.frames.Add(1)
	h, err := parseHeader(hb)
	if err == nil {
		err = d.check(h)
	}
	if err != nil {
		s.protocolError(d, c, hs, inHold, err)
		return
	}
	d.h, d.remain, d.act, d.chargeChunks = h, h.Length, actForward, false
	if h.OpCode.IsData() {
		start := h.OpCode != ws.OpContinuation
		if start {
			d.msgSize = 0
		}
		d.msgOpen = !h.Fin
		if d.src.side == sideClient && !s.admit(d, c, hs, inHold, start) {
			return
		}
	} else {
		switch {
		case h.OpCode == ws.OpClose && h.Length >= 2:
			// Hold the status code: it is checked and recorded before
			// anything of the frame goes on.
			d.act, d.holdN = actHold, 2
		case h.OpCode == ws.OpClose:
			d.closeCode = int(ws.StatusNoStatusRcvd)
			s.claimClose(d.src)
			if d.src.proxyClose.Load() {
				d.act = actDrop // the answer to the proxy's own close
			}
		case h.OpCode == ws.OpPong && h.Length == pingLen && d.src.side == sideClient && s.opt.PingInterval > 0:
			d.act, d.holdN = actHold, pingLen
		}
	}
	if d.act == actForward && d.remain > 0 && c.i == len(c.p) && !d.chargeChunks {
		// No payload byte came with the header: keep the header until one
		// does. Forwarded alone, it would leave dst inside a frame, and if
		// src went away now (a writer that sends header and payload in two
		// writes, as gobwas/ws does, killed between them), dst could get no
		// close frame, only a TCP close. Held, it is dropped and dst gets
		// its close code (1014 to the client). Frames charged to the byte
		// bucket as they stream are left alone: the held byte would not be.
		d.act, d.holdN = actHold, 1
	}
	switch d.act {
	case actForward:
		d.dstMid = d.remain > 0
		if inHold {
			s.forward(d, d.hold[:d.hn], h.OpCode == ws.OpClose && d.remain == 0, c.now)
			d.hn = 0
		}
	case actDrop:
		if !inHold {
			s.flush(d, c, hs, false)
		}
		c.run = c.i
		d.hn = 0
	case actHold:
		if !inHold {
			s.flush(d, c, hs, false)
			d.hn = uint8(copy(d.hold[:], hb))
		}
		d.hlen = d.hn
		c.run = c.i
	}
	if d.remain == 0 {
		s.frameEnd(d, c)
	}
}

// payload moves the current frame's payload bytes at c.i along.
func (s *Session) payload(d *dir, c *cursor) {
	k := int(min(int64(len(c.p)-c.i), d.remain))
	switch d.act {
	case actForward:
		if d.chargeChunks && !s.closing.Load() {
			k = int(min(int64(k), s.lim.ByteBurst()))
			if !s.lim.AllowBytes(int64(k)) && !s.overBytes(d, c, k) {
				return
			}
		}
		c.i += k
	case actDrop:
		s.flush(d, c, c.i, false)
		c.i += k
		c.run = c.i
	case actHold:
		k = min(k, int(d.hlen)+int(d.holdN)-int(d.hn))
		d.hn += uint8(copy(d.hold[d.hn:], c.p[c.i:c.i+k]))
		c.i += k
		c.run = c.i
	}
	d.remain -= int64(k)
	if d.act == actHold && int(d.hn) == int(d.hlen)+int(d.holdN) {
		s.decideHeld(d, c)
	}
	if d.remain == 0 && !d.drain {
		s.frameEnd(d, c)
	}
}

// decideHeld decides on a control frame whose first bytes are in hold.
func (s *Session) decideHeld(d *dir, c *cursor) {
	var u [pingLen]byte
	n := copy(u[:], d.hold[d.hlen:d.hn])
	if d.h.Masked {
		ws.Cipher(u[:n], d.h.Mask, 0)
	}
	fwd := true
	switch d.h.OpCode {
	case ws.OpPong:
		if n == pingLen && [4]byte(u[:4]) == pingMagic {
			fwd = false // answers the proxy's ping: the backend never sent it
			if seq := binary.BigEndian.Uint32(u[4:]); seq == s.pingSent.Load() {
				s.pongGot.Store(seq)
			}
		}
	case ws.OpClose:
		code := binary.BigEndian.Uint16(u[:2])
		if !validCloseCode(code) {
			d.hn = 0
			s.protocolError(d, c, c.i, true, fmt.Errorf("close code %d: %w", code, errCloseCode))
			return
		}
		d.closeCode = int(code)
		s.claimClose(d.src)
		fwd = !d.src.proxyClose.Load() // else the answer to the proxy's own close
	}
	if fwd {
		d.act = actForward
		d.dstMid = d.remain > 0
		s.forward(d, d.hold[:d.hn], d.h.OpCode == ws.OpClose && d.remain == 0, c.now)
	} else {
		d.act = actDrop
	}
	d.hn = 0
}

// frameEnd runs when the current frame's last byte has been handled.
func (s *Session) frameEnd(d *dir, c *cursor) {
	fwd := d.act == actForward
	if fwd {
		d.dstMid = false
	}
	if d.h.OpCode != ws.OpClose {
		return
	}
	if fwd {
		s.flush(d, c, c.i, true)
	}
	// Nothing may follow a close frame; whatever does is ignored.
	d.drain = true
	s.noteCloseFrom(d.src)
}

// admit applies MaxMessageSize and the rate limits to a client data frame
// whose header is at hs (or in hold). It reports whether the frame goes on.
// To throttle, it forwards what came before the header and waits; the header
// and everything after it wait with it, and the client is not read meanwhile.
func (s *Session) admit(d *dir, c *cursor, hs int, inHold, start bool) bool {
	h := d.h
	if max := s.opt.MaxMessageSize; max > 0 {
		if h.Length > max-d.msgSize {
			s.refuse(d, c, hs, inHold, causeSize, ws.StatusMessageTooBig)
			return false
		}
		d.msgSize += h.Length
	}
	if s.lim == nil || s.closing.Load() {
		// While the close handshake runs, a wait would only hold it up.
		return true
	}
	// A frame that fits the byte burst is charged whole, here, so that a
	// close for the limit falls between frames; a bigger one is charged
	// as its payload arrives.
	var nb int64
	if burst := s.lim.ByteBurst(); burst > 0 {
		if h.Length <= burst {
			nb = h.Length
		} else {
			d.chargeChunks = true
		}
	}
	msgTaken := !start || s.lim.AllowMessage()
	if msgTaken && s.lim.AllowBytes(nb) {
		return true
	}
	d.limitHits++
	if s.opt.CloseOnLimit {
		s.refuse(d, c, hs, inHold, causeRate, ws.StatusPolicyViolation)
		return false
	}
	if !inHold {
		s.flush(d, c, hs, false)
	}
	var err error
	if !msgTaken {
		err = s.lim.WaitMessage(s.ctx)
	}
	if err == nil {
		err = s.lim.WaitBytes(s.ctx, nb)
	}
	if err != nil { // teardown
		d.drain = true
		return false
	}
	return true
}

// overBytes handles k payload bytes that the byte bucket cannot pay for now.
// It reports whether they may go on.
func (s *Session) overBytes(d *dir, c *cursor, k int) bool {
	d.limitHits++
	s.flush(d, c, c.i, false)
	if s.opt.CloseOnLimit {
		d.act = actDrop
		s.initiate(causeRate, ws.StatusPolicyViolation, ws.StatusGoingAway, nil)
		s.stuck(d) // the backend got part of a frame; no close frame can follow it
		return false
	}
	if err := s.lim.WaitBytes(s.ctx, int64(k)); err != nil {
		d.drain = true
		return false
	}
	return true
}

// refuse drops the frame whose header is at hs (or in hold) and closes the
// session for c: code to the client, 1001 to the backend. The client's stream
// is still parsed, so that its answer to the close is recognised.
func (s *Session) refuse(d *dir, c *cursor, hs int, inHold bool, why cause, code ws.StatusCode) {
	if !inHold {
		s.flush(d, c, hs, false)
	}
	c.run = c.i
	d.hn = 0
	d.act = actDrop
	s.initiate(why, code, ws.StatusGoingAway, nil)
}

// protocolError fails the connection because src broke the protocol at hs
// (or in hold): src gets 1002, the other peer 1001 (the backend) or 1014 (the
// client). src's stream cannot be parsed any more and is drained.
func (s *Session) protocolError(d *dir, c *cursor, hs int, inHold bool, err error) {
	if !inHold {
		s.flush(d, c, hs, false)
	}
	c.run = c.i
	d.hn = 0
	d.drain = true
	err = fmt.Errorf("checking %s frame: %w", d.src.side, err)
	if d.src.side == sideClient {
		s.initiate(causeProtocol, ws.StatusProtocolError, ws.StatusGoingAway, err)
	} else {
		s.initiate(causeProtocol, 1014, ws.StatusProtocolError, err)
	}
	s.noteCloseFrom(d.src) // its answer cannot be recognised; do not wait for it
}

// fillHeader adds bytes from b to the header in hold. It returns how many it
// took and whether the header is complete.
func (d *dir) fillHeader(b []byte) (n int, complete bool) {
	for {
		need := 2
		if d.hn >= 2 {
			need = headerLen(d.hold[0], d.hold[1])
		}
		if int(d.hn) == need {
			return n, true
		}
		if n == len(b) {
			return n, false
		}
		m := copy(d.hold[d.hn:need], b[n:])
		d.hn += uint8(m)
		n += m
	}
}

// headerLen returns the length of the frame header that starts with b0, b1.
func headerLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// parseHeader decodes a complete frame header. It is ws.ReadHeader without
// the io.Reader, which would cost a call per field and an allocation.
func parseHeader(b []byte) (h ws.Header, err error) {
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return h, ws.ErrHeaderLengthMSB
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[n:n+4])
	}
	return h, nil
}

// check checks h against the rules of RFC 6455 for d's side and state, and
// those of RFC 7692 for RSV1: only on the first frame of a data message.
func (d *dir) check(h ws.Header) error {
	st := d.state
	if d.msgOpen {
		st = st.Set(ws.StateFragmented)
	}
	if err := ws.CheckHeader(h, st); err != nil {
		return err
	}
	if h.Rsv != 0 && (h.Rsv != rsv1 || h.OpCode.IsControl() || h.OpCode == ws.OpContinuation) {
		return errRSV
	}
	if h.OpCode == ws.OpClose && h.Length == 1 {
		return errCloseLength
	}
	return nil
}

// validCloseCode reports whether a close frame may carry code: the codes
// RFC 6455 defines for use in frames, those registered with IANA since
// (1012-1014), and the application and private ranges. ws.CheckCloseFrameData
// does not know 1012-1014, and 1014 is what the proxy itself sends.
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
