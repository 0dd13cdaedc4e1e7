package splice

import (
	"crypto/tls"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// pingLen is the payload length of the proxy's pings: pingMagic and a
// big-endian sequence number. A pong is the proxy's to swallow when its
// payload has that shape.
const pingLen = 8

var pingMagic = [4]byte{'s', 'l', 'c', 0}

// maxReason is the longest reason text in the proxy's close frames.
const maxReason = 16

// peer is one end of the session as a destination: its connection, the lock
// that makes the session its only writer, and the frames waiting to be
// injected into its stream.
//
// Forwarded bytes and injected frames (pings, closes) share the stream, and an
// injected frame may only go between frames. A goroutine that wants to inject
// sets pendPing or pendClose and tries the lock (kick); whoever holds the lock
// writes what is pending as soon as the stream is at a frame boundary, and
// tries again after unlocking, so nothing pending is left behind.
//
// In an inline session nobody waits for a write under the lock: what the
// socket does not take at once goes to pend, in order, and a goroutine of
// the session (drain) writes it out as the peer reads. The one direction
// that feeds the peer reads no more from its source meanwhile (it is the
// waiter), so pend holds at most one read's worth and a few control frames.
type peer struct {
	conn net.Conn
	raw  syscall.RawConn // readiness without a buffer; nil: blocking reads
	tls  bool            // conn is a *tls.Conn
	side side
	// graceUsed: how many times the close grace was extended for
	// a close frame that waits for the end of a frame still moving to
	// this peer (Session.onGrace). Touched by onGrace only.
	graceUsed uint8

	wmu         sync.Mutex
	midFrame    bool    // guarded by wmu: the stream is inside a frame
	closed      bool    // guarded by wmu: a close frame was written, or a write failed
	wdl         int64   // guarded by wmu: write deadline last set, in nanoseconds since Run began
	pend        *[]byte // guarded by wmu: inline: bytes the socket has not taken yet; nil = none
	poff        int     // guarded by wmu: of pend, bytes written already
	closeQueued bool    // guarded by wmu: pend holds a close frame
	waiter      *dir    // guarded by wmu: the direction waiting for pend to drain

	closeSent  atomic.Bool   // a close frame was written, forwarded or the proxy's
	proxyClose atomic.Bool   // the proxy's own close frame was written: the next close from this peer answers it
	gone       atomic.Bool   // write nothing more
	pendClose  atomic.Uint32 // close to inject: code<<8 | cause; 0 = none
	pendPing   atomic.Bool   // ping to inject
}

func (p *peer) init(c net.Conn, x side) {
	p.conn, p.side = c, x
	under := c
	if tc, ok := c.(*tls.Conn); ok {
		p.tls = true
		under = tc.NetConn()
	}
	p.raw = rawConnOf(under)
}

// close closes the connection. For TLS the socket goes first, so that a
// write blocked on a stuck peer cannot hold up the close_notify that
// tls.Conn.Close tries to send.
func (p *peer) close() {
	if tc, ok := p.conn.(*tls.Conn); ok {
		tc.NetConn().Close()
	}
	p.conn.Close()
}

func (p *peer) hasPending() bool {
	return p.pendPing.Load() || p.pendClose.Load() != 0
}

// send writes forwarded bytes b to p. boundary says whether p's stream is at a
// frame boundary after b; closes says b ends a close frame. Bytes for a peer
// that got a close frame or is gone are dropped.
func (s *Session) send(p *peer, b []byte, boundary, closes bool, now time.Time) {
	p.wmu.Lock()
	if p.closed || p.gone.Load() {
		p.wmu.Unlock()
		return
	}
	err := s.writeLocked(p, b, now)
	p.midFrame = !boundary
	closedNow := false
	if err == nil {
		if closes {
			p.closed = true
			p.closeSent.Store(true)
			closedNow = p.sentLocked()
		} else if boundary && p.hasPending() {
			closedNow, err = s.flushPendingLocked(p, now)
		}
	}
	p.wmu.Unlock()
	s.afterWrite(p, closedNow, err)
	if err == nil && boundary && p.hasPending() {
		// Requested while we held the lock: take it over.
		s.kick(p)
	}
}

// requestClose asks for a close frame with code to go to p as soon as its
// stream is at a frame boundary. The first request wins.
func (s *Session) requestClose(p *peer, code ws.StatusCode, c cause) {
	p.pendClose.CompareAndSwap(0, uint32(code)<<8|uint32(c))
	s.kick(p)
}

// kick writes p's pending frames if nobody else holds p's writer lock. If
// somebody does, they will: see peer.
//
// Inside a frame nothing can be written, and kick leaves the pending frames
// to the writer that ends the frame. (It used to try again at once, and with
// nobody else taking the lock, recursed until the frame ended: a ping due
// while a peer paused mid-frame grew a stack without bound.)
func (s *Session) kick(p *peer) {
	for p.hasPending() && p.wmu.TryLock() {
		closedNow, err := s.flushPendingLocked(p, time.Now())
		mid := p.midFrame
		p.wmu.Unlock()
		s.afterWrite(p, closedNow, err)
		if mid || err != nil {
			return // the writer that ends the frame flushes
		}
	}
}

// afterWrite reports the outcome of writes done under p's lock.
func (s *Session) afterWrite(p *peer, closedNow bool, err error) {
	if err != nil {
		s.writeFailed(p, err)
		return
	}
	if closedNow {
		s.noteCloseTo(p)
	}
}

// flushPendingLocked writes the frames pending for p if its stream is at a
// frame boundary. It reports whether it wrote a close frame.
func (s *Session) flushPendingLocked(p *peer, now time.Time) (closedNow bool, err error) {
	if p.closed || p.gone.Load() {
		p.pendPing.Store(false)
		p.pendClose.Store(0)
		return false, nil
	}
	if p.midFrame {
		return false, nil
	}
	// Once a close handshake is under way a ping is pointless, and the
	// client's answer could reach a socket that the end of the handshake
	// has closed (a reset, which can cost the client the close frame).
	if p.pendPing.Swap(false) && !s.closing.Load() {
		seq := s.pingSeq.Load()
		var pl [pingLen]byte
		copy(pl[:], pingMagic[:])
		binary.BigEndian.PutUint32(pl[4:], seq)
		// Sent before it is written: the answer may be read before Write returns.
		if now.IsZero() {
			now = time.Now()
		}
		s.pingAt.Store(int64(now.Sub(s.start)))
		s.pingFrom.Store(s.c2b.bytes.Load())
		acked, _ := ackedBytes(p.raw)
		s.pingAcked.Store(acked)
		s.pingSent.Store(seq)
		if err := s.writeLocked(p, p.frame(ws.OpPing, pl[:]), now); err != nil {
			return false, err
		}
	}
	if v := p.pendClose.Swap(0); v != 0 {
		code, c := ws.StatusCode(v>>8), cause(v&0xff)
		var pl [2 + maxReason]byte
		binary.BigEndian.PutUint16(pl[:], uint16(code))
		n := 2 + copy(pl[2:], c.String())
		if err := s.writeLocked(p, p.frame(ws.OpClose, pl[:n]), now); err != nil {
			return false, err
		}
		p.closed = true
		p.closeSent.Store(true)
		p.proxyClose.Store(true)
		return p.sentLocked(), nil
	}
	return false, nil
}

// sentLocked reports whether a close frame just written to p has left: if
// it waits in pend, drain reports it when it goes.
func (p *peer) sentLocked() bool {
	if p.pend != nil {
		p.closeQueued = true
		return false
	}
	return true
}

// frame builds a control frame for p: masked toward the backend, where the
// proxy is the client, unmasked toward the client. (It allocates: a buffer
// kept per peer would cost every idle session, for a frame sent rarely.)
func (p *peer) frame(op ws.OpCode, payload []byte) []byte {
	b := make([]byte, 0, ws.MaxHeaderSize+len(payload))
	b = append(b, 0x80|byte(op), byte(len(payload)))
	if p.side == sideClient {
		return append(b, payload...)
	}
	b[1] |= 0x80
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], rand.Uint32())
	b = append(b, mask[:]...)
	n := len(b)
	b = append(b, payload...)
	ws.Cipher(b[n:], mask, 0)
	return b
}

// writeLocked writes b to p under a write deadline that is refreshed only
// when it has used up an eighth of its span, so that a busy stream does not
// pay for a deadline change per write.
func (s *Session) writeLocked(p *peer, b []byte, now time.Time) error {
	if s.inline {
		return s.queueLocked(p, b)
	}
	wt := s.opt.WriteTimeout
	switch at := int64(now.Sub(s.start)); {
	case s.hurry.Load():
		p.conn.SetWriteDeadline(now.Add(hurryWriteTimeout))
	case p.wdl-at < int64(wt-wt/8):
		p.wdl = at + int64(wt)
		p.conn.SetWriteDeadline(now.Add(wt))
	}
	_, err := p.conn.Write(b)
	if err != nil {
		p.closed = true
	}
	return err
}

// pendPool holds pending buffers for inline sessions' slow peers.
var pendPool = sync.Pool{New: func() any { b := make([]byte, 0, bufSize); return &b }}

// queueLocked writes b to p without waiting: what the socket does not take
// now is appended to pend, and the first bytes to go there start a drain.
func (s *Session) queueLocked(p *peer, b []byte) error {
	if p.pend == nil {
		n, err := p.writeNow(b)
		if err != nil {
			p.closed = true
			return err
		}
		if n == len(b) {
			return nil
		}
		b = b[n:]
		p.pend = pendPool.Get().(*[]byte)
		s.refs.Add(1) // the drain's; the caller holds one, so teardown has not finished
		go s.drain(p)
	}
	*p.pend = append(*p.pend, b...)
	return nil
}

// drain writes p's pending bytes as p takes them, within the write timeout,
// then lets the direction that waited for them go on.
func (s *Session) drain(p *peer) {
	defer s.release()
	wt := s.opt.WriteTimeout
	if s.hurry.Load() {
		wt = hurryWriteTimeout
	}
	p.conn.SetWriteDeadline(time.Now().Add(wt))
	var werr error
	err := p.raw.Write(func(fd uintptr) bool {
		p.wmu.Lock()
		defer p.wmu.Unlock()
		for b := *p.pend; p.poff < len(b); {
			n, err := writeFd(fd, b[p.poff:])
			if err == errWouldBlock {
				return false // wait until p can take more
			}
			if err != nil {
				werr = &net.OpError{Op: "write", Net: p.conn.RemoteAddr().Network(), Err: os.NewSyscallError("sendto", err)}
				break
			}
			p.poff += n
		}
		return true
	})
	if werr == nil {
		werr = err // the deadline passed, or the connection closed
	}
	p.wmu.Lock()
	closedNow := werr == nil && p.closeQueued
	if werr != nil {
		p.closed = true
	}
	p.closeQueued = false
	*p.pend = (*p.pend)[:0]
	if cap(*p.pend) == bufSize {
		pendPool.Put(p.pend)
	}
	p.pend, p.poff = nil, 0
	w := p.waiter
	p.waiter = nil
	p.wmu.Unlock()
	s.afterWrite(p, closedNow, werr)
	if w != nil {
		s.resume(w)
	}
	if werr == nil && p.hasPending() {
		s.kick(p)
	}
}
