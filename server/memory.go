package server

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"
)

// memoryCheckEvery is how often the server looks for freed memory to hand
// back to the operating system.
const memoryCheckEvery = 30 * time.Second

// releaseMemory returns heap that a load peak left free to the operating
// system, so that RSS comes back down after a burst of connections instead
// of staying at the peak. The Go runtime does this by itself, but slowly; a
// proxy that just closed thousands of WebSocket sessions should not look,
// to its operator, as if it still held them. It checks every period until
// ctx ends.
func releaseMemory(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		// Held by the runtime but used by nothing: free spans not yet
		// returned. Act only when that is both sizeable and more than what
		// is in use, so a steady load never pays for forced collections.
		if unused := m.HeapIdle - m.HeapReleased; unused > 8<<20 && unused > m.HeapInuse {
			debug.FreeOSMemory()
		}
	}
}
