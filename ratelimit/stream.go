// Package ratelimit holds the token buckets sluice uses to limit traffic. It
// knows nothing of HTTP or WebSocket: callers decide what a message is and
// which bytes count.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// StreamLimits configures a Stream. The zero value limits nothing.
type StreamLimits struct {
	// MessagesPerSecond is the rate at which message tokens refill.
	// 0 or negative: messages are not limited.
	MessagesPerSecond float64
	// MessageBurst is how many messages may pass at once (the bucket size).
	// 0 or negative: ceil(MessagesPerSecond), at least 1.
	MessageBurst int
	// BytesPerSecond is the rate at which byte tokens refill.
	// 0 or negative: bytes are not limited.
	BytesPerSecond int64
	// ByteBurst is how many bytes may pass at once (the bucket size).
	// 0 or negative: BytesPerSecond, that is one second's worth.
	ByteBurst int64
}

// Stream limits one ordered stream of messages, such as the client-to-backend
// direction of one WebSocket connection. It holds two token buckets built on
// golang.org/x/time/rate: one counts messages, one counts bytes. A bucket of
// size b (the burst) starts full and refills at r tokens per second up to b;
// a message takes one message token, n bytes take n byte tokens.
//
// Stream serves both answers to a limit:
//   - throttle: WaitMessage and WaitBytes block until the tokens are there.
//     A caller that waits before reading more input makes the sender feel TCP
//     backpressure and loses nothing.
//   - close: AllowMessage and AllowBytes take the tokens if they are there
//     now and report whether they were; a false answer takes nothing.
//
// A nil *Stream limits nothing, as does the zero Stream. Methods are safe for
// concurrent use.
type Stream struct {
	msgs  *rate.Limiter // nil: messages unlimited
	bytes *rate.Limiter // nil: bytes unlimited
}

// NewStream returns a Stream with the given limits, both buckets full.
func NewStream(l StreamLimits) *Stream {
	s := &Stream{}
	if l.MessagesPerSecond > 0 {
		b := l.MessageBurst
		if b <= 0 {
			b = int(min(math.Ceil(l.MessagesPerSecond), math.MaxInt32))
		}
		s.msgs = rate.NewLimiter(rate.Limit(l.MessagesPerSecond), max(b, 1))
	}
	if l.BytesPerSecond > 0 {
		b := l.ByteBurst
		if b <= 0 {
			b = l.BytesPerSecond
		}
		// rate.Limiter counts in int; a burst above 2 GiB is as good as
		// none for one connection.
		s.bytes = rate.NewLimiter(rate.Limit(l.BytesPerSecond), int(min(b, math.MaxInt32)))
	}
	return s
}

// Limited reports whether s limits anything.
func (s *Stream) Limited() bool {
	return s != nil && (s.msgs != nil || s.bytes != nil)
}

// ByteBurst returns the byte bucket size, or 0 when bytes are not limited.
// It is the most that AllowBytes can ever let through in one call.
func (s *Stream) ByteBurst() int64 {
	if s == nil || s.bytes == nil {
		return 0
	}
	return int64(s.bytes.Burst())
}

// AllowMessage takes one message token if there is one now.
func (s *Stream) AllowMessage() bool {
	return s.AllowMessageAt(time.Now())
}

// AllowMessageAt is AllowMessage at time t.
func (s *Stream) AllowMessageAt(t time.Time) bool {
	if s == nil || s.msgs == nil {
		return true
	}
	return s.msgs.AllowN(t, 1)
}

// WaitMessage blocks until it has taken one message token or ctx is done;
// then it returns ctx's error and takes nothing.
func (s *Stream) WaitMessage(ctx context.Context) error {
	if s == nil || s.msgs == nil {
		return nil
	}
	if err := s.msgs.Wait(ctx); err != nil {
		return fmt.Errorf("ratelimit: waiting for a message token: %w", err)
	}
	return nil
}

// AllowBytes takes n byte tokens if there are n now. It reports false for n
// above ByteBurst, which can never pass at once; callers that meet such an
// amount split it. n <= 0 is always allowed.
func (s *Stream) AllowBytes(n int64) bool {
	return s.AllowBytesAt(time.Now(), n)
}

// AllowBytesAt is AllowBytes at time t.
func (s *Stream) AllowBytesAt(t time.Time, n int64) bool {
	if s == nil || s.bytes == nil || n <= 0 {
		return true
	}
	if n > int64(s.bytes.Burst()) {
		return false
	}
	return s.bytes.AllowN(t, int(n))
}

// WaitBytes blocks until it has taken n byte tokens or ctx is done. An n
// above ByteBurst is taken in burst-sized parts (rate.Limiter.WaitN would
// fail on it forever). When ctx ends midway, parts already taken stay taken.
func (s *Stream) WaitBytes(ctx context.Context, n int64) error {
	if s == nil || s.bytes == nil {
		return nil
	}
	burst := int64(s.bytes.Burst())
	for n > 0 {
		part := min(n, burst)
		if err := s.bytes.WaitN(ctx, int(part)); err != nil {
			return fmt.Errorf("ratelimit: waiting for %d byte tokens: %w", part, err)
		}
		n -= part
	}
	return nil
}
