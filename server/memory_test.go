package server

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"
)

func TestWorthReleasing(t *testing.T) {
	const mib = 1 << 20
	idle := heapState{autoGCs: 7, free: 1 * mib, objects: 3 * mib, live: 3 * mib}
	for _, tc := range []struct {
		name      string
		prev, now heapState
		want      bool
	}{
		{"idle with little to gain", idle, idle, false},
		{"busy: the runtime collected since the last check",
			heapState{autoGCs: 6}, heapState{autoGCs: 7, free: 20 * mib, objects: 30 * mib, live: 5 * mib}, false},
		{"quiet after a peak: free pages left resident",
			idle, heapState{autoGCs: 7, free: 12 * mib, objects: 6 * mib, live: 5 * mib}, true},
		{"quiet after a peak: garbage nothing collects",
			idle, heapState{autoGCs: 7, free: 0, objects: 9 * mib, live: 4 * mib}, true},
		{"just below the threshold",
			idle, heapState{autoGCs: 7, free: 2 * mib, objects: 6*mib - 1, live: 4 * mib}, false},
		{"at the threshold",
			idle, heapState{autoGCs: 7, free: 2 * mib, objects: 6 * mib, live: 4 * mib}, true},
		// The first collection has not happened yet: live is 0, so all
		// objects count as garbage.
		{"no collection yet", heapState{}, heapState{objects: 5 * mib}, true},
		{"metrics unknown to the runtime", heapState{}, heapState{}, false},
	} {
		if got := worthReleasing(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: worthReleasing(%+v, %+v) = %v, want %v", tc.name, tc.prev, tc.now, got, tc.want)
		}
	}
}

// TestReleaseEmptiesPools checks that release drops what sync.Pools hold,
// which survives one collection in the pools' victim cache.
func TestReleaseEmptiesPools(t *testing.T) {
	pooled := func(p *sync.Pool) weak.Pointer[[64 << 10]byte] {
		buf := new([64 << 10]byte)
		p.Put(buf)
		return weak.Make(buf)
	}
	// The premise: one collection is not enough.
	var p1, p2 sync.Pool
	w1 := pooled(&p1)
	runtime.GC()
	if w1.Value() == nil {
		t.Skip("the pool dropped its buffer at the first collection; nothing to test")
	}
	w2 := pooled(&p2)
	release()
	if w2.Value() != nil {
		t.Error("a pooled buffer survived release")
	}
	// The pools must outlive the checks, or the buffers would go with them.
	runtime.KeepAlive(&p1)
	runtime.KeepAlive(&p2)
}

// TestReleaseMemory frees a 64 MiB peak and checks that releaseMemory
// hands it back to the OS well before the runtime's own scavenger would.
func TestReleaseMemory(t *testing.T) {
	// Many small objects, like the buffers and structs of closed sessions.
	peak := make([][]byte, 64<<10)
	for i := range peak {
		peak[i] = make([]byte, 1<<10)
		peak[i][0] = 1
	}
	peak = nil
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	retained := func(m *runtime.MemStats) uint64 { return m.HeapIdle - m.HeapReleased }
	if retained(&before) < 32<<20 {
		t.Skipf("the runtime already returned the peak (%d MiB retained)", retained(&before)>>20)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		releaseMemory(ctx, 10*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		if retained(&m) < 8<<20 {
			t.Logf("retained free heap: %d MiB -> %d MiB", retained(&before)>>20, retained(&m)>>20)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d MiB of free heap retained after 5s", retained(&m)>>20)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
