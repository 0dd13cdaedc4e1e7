package server

import (
	"context"
	"runtime"
	"testing"
	"time"
)

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
