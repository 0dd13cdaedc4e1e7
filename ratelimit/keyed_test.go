package ratelimit

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func TestKeyedAllow(t *testing.T) {
	k := NewKeyed(2, 3, 0) // 2/s, burst 3
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("2001:db8::1")
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := k.Allow(a, t0); !ok {
			t.Fatalf("request %d within the burst denied", i+1)
		}
	}
	ok, retry := k.Allow(a, t0)
	if ok || retry != time.Second {
		t.Fatalf("4th request: ok %v retry %v, want denied with 1s", ok, retry)
	}
	if ok, _ := k.Allow(b, t0); !ok {
		t.Fatal("another address shares the bucket")
	}
	// Half a second refills one token at 2/s.
	if ok, _ := k.Allow(a, t0.Add(500*time.Millisecond)); !ok {
		t.Fatal("token not refilled after 500ms")
	}
	if ok, _ := k.Allow(a, t0.Add(500*time.Millisecond)); ok {
		t.Fatal("more than one token refilled after 500ms")
	}
}

func TestKeyedRetryAfterSlowRate(t *testing.T) {
	k := NewKeyed(0.1, 1, 0) // one request every 10 s
	a := netip.MustParseAddr("192.0.2.1")
	t0 := time.Unix(1000, 0)
	k.Allow(a, t0)
	if ok, retry := k.Allow(a, t0.Add(2500*time.Millisecond)); ok || retry != 8*time.Second {
		t.Fatalf("ok %v retry %v, want denied, 8s (7.5s rounded up)", ok, retry)
	}
}

func TestKeyedForgetsRefilledBuckets(t *testing.T) {
	k := NewKeyed(10, 10, 0)
	t0 := time.Unix(1000, 0)
	for i := range 1000 {
		k.Allow(addrN(i), t0)
	}
	if n := k.Len(); n != 1000 {
		t.Fatalf("%d keys, want 1000", n)
	}
	// After a sweep interval every bucket has refilled; new traffic sweeps.
	later := t0.Add(sweepEvery + time.Second)
	for i := range keyedShards * 4 {
		k.Allow(addrN(100000+i), later)
	}
	if n := k.Len(); n > keyedShards*4 {
		t.Fatalf("%d keys after sweeping refilled buckets, want at most %d", n, keyedShards*4)
	}
}

// TestKeyedBounded floods the limiter from a million distinct addresses in
// the same instant (so no bucket refills) and checks that the table stays
// within its bound, and the memory with it.
func TestKeyedBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a million addresses")
	}
	const maxKeys = 20_000
	flood := 1_000_000
	if raceEnabled {
		flood = 200_000 // the race detector makes map work ~7x slower
	}
	k := NewKeyed(1, 5, maxKeys)
	t0 := time.Unix(1000, 0)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	peak := 0
	for i := range flood {
		k.Allow(addrN(i), t0)
		if i%10_000 == 0 {
			peak = max(peak, k.Len())
		}
	}
	peak = max(peak, k.Len())
	if peak > maxKeys {
		t.Fatalf("table grew to %d keys, bound %d", peak, maxKeys)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grow := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d distinct addresses: peak %d keys (bound %d), heap %+d KiB (%d B per key)", flood, peak, maxKeys, grow>>10, grow/int64(max(peak, 1)))
	if grow > 20<<20 {
		t.Fatalf("heap grew by %d MiB", grow>>20)
	}
	// A client seen last is still limited: its bucket was not dropped.
	last := addrN(flood - 1)
	for range 4 {
		k.Allow(last, t0)
	}
	if ok, _ := k.Allow(last, t0); ok {
		t.Fatal("the most recent client got a fresh bucket")
	}
}

func addrN(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func BenchmarkKeyedAllow(b *testing.B) {
	k := NewKeyed(1e9, 1e9, 0)
	a := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		k.Allow(a, now)
	}
}
