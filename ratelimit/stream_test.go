package ratelimit

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestStreamZeroLimitsNothing(t *testing.T) {
	for _, s := range []*Stream{nil, {}, NewStream(StreamLimits{})} {
		if s.Limited() {
			t.Errorf("%#v: Limited() = true, want false", s)
		}
		for range 1000 {
			if !s.AllowMessage() || !s.AllowBytes(1<<40) {
				t.Fatalf("%#v: denied although unlimited", s)
			}
		}
		if err := s.WaitMessage(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitBytes(context.Background(), 1<<40); err != nil {
			t.Fatal(err)
		}
		if b := s.ByteBurst(); b != 0 {
			t.Errorf("ByteBurst() = %d, want 0", b)
		}
	}
}

func TestStreamDefaults(t *testing.T) {
	tests := []struct {
		name      string
		limits    StreamLimits
		msgBurst  int
		byteBurst int64
	}{
		{
			name:     "message burst rounds the rate up",
			limits:   StreamLimits{MessagesPerSecond: 2.5},
			msgBurst: 3,
		},
		{
			name:     "slow rate still lets one message through",
			limits:   StreamLimits{MessagesPerSecond: 0.1},
			msgBurst: 1,
		},
		{
			name:     "explicit message burst",
			limits:   StreamLimits{MessagesPerSecond: 10, MessageBurst: 50},
			msgBurst: 50,
		},
		{
			name:      "byte burst is one second's worth",
			limits:    StreamLimits{BytesPerSecond: 4096},
			byteBurst: 4096,
		},
		{
			name:      "explicit byte burst",
			limits:    StreamLimits{BytesPerSecond: 4096, ByteBurst: 100},
			byteBurst: 100,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStream(tt.limits)
			if !s.Limited() {
				t.Fatal("Limited() = false")
			}
			if got := s.ByteBurst(); got != tt.byteBurst {
				t.Errorf("ByteBurst() = %d, want %d", got, tt.byteBurst)
			}
			if tt.msgBurst > 0 {
				if got := s.msgs.Burst(); got != tt.msgBurst {
					t.Errorf("message burst = %d, want %d", got, tt.msgBurst)
				}
			}
		})
	}
}

func TestStreamAllow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewStream(StreamLimits{MessagesPerSecond: 10, MessageBurst: 2, BytesPerSecond: 1000})
		if !s.AllowMessage() || !s.AllowMessage() {
			t.Fatal("burst of 2 messages denied")
		}
		if s.AllowMessage() {
			t.Fatal("third message allowed with an empty bucket")
		}
		time.Sleep(100 * time.Millisecond) // one token at 10/s
		if !s.AllowMessage() {
			t.Fatal("message denied after the bucket refilled one token")
		}
		if s.AllowMessage() {
			t.Fatal("message allowed beyond the refill")
		}

		if s.AllowBytes(1001) {
			t.Fatal("more than the burst allowed at once")
		}
		if !s.AllowBytes(1000) {
			t.Fatal("a full burst was denied; a failed AllowBytes must take nothing")
		}
		if s.AllowBytes(1) {
			t.Fatal("byte allowed from an empty bucket")
		}
		time.Sleep(500 * time.Millisecond)
		if !s.AllowBytes(500) || s.AllowBytes(1) {
			t.Fatal("refill after 0.5s should allow exactly 500 bytes")
		}
	})
}

func TestStreamWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewStream(StreamLimits{MessagesPerSecond: 4, MessageBurst: 1, BytesPerSecond: 1000, ByteBurst: 100})
		ctx := context.Background()
		start := time.Now()
		for range 5 {
			if err := s.WaitMessage(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// One token in the bucket, then four more at 4/s.
		if got, want := time.Since(start), time.Second; got != want {
			t.Errorf("5 messages at 4/s with burst 1 took %v, want %v", got, want)
		}

		// 2100 bytes, burst 100: the first 100 at once, 2000 more at 1000/s.
		// Asking for more than the burst must not fail (x/time/rate's WaitN
		// would).
		start = time.Now()
		if err := s.WaitBytes(ctx, 2100); err != nil {
			t.Fatal(err)
		}
		if got, want := time.Since(start), 2*time.Second; got != want {
			t.Errorf("2100 bytes at 1000/s with burst 100 took %v, want %v", got, want)
		}
	})
}

func TestStreamWaitCanceled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewStream(StreamLimits{MessagesPerSecond: 1, BytesPerSecond: 10})
		if !s.AllowMessage() || !s.AllowBytes(10) {
			t.Fatal("full buckets denied")
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 2)
		go func() { errc <- s.WaitMessage(ctx) }()
		go func() { errc <- s.WaitBytes(ctx, 5) }()
		synctest.Wait() // both blocked on their timers
		cancel()
		for range 2 {
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
		}
		// A canceled wait gives its reservation back: after one second the
		// message bucket holds exactly one token again.
		time.Sleep(time.Second)
		if !s.AllowMessage() {
			t.Error("canceled wait kept its token")
		}
	})
}
