package server

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memoryCheckEvery is how often the server looks for memory that a past
// load peak left behind, and also how long the process must have been
// quiet (no collection of its own) before anything is done about it.
const memoryCheckEvery = 30 * time.Second

// releaseMinBytes is the least reclaimable heap worth two collections and
// a scavenge: below it, the runtime's own pacing is left alone.
const releaseMinBytes = 4 << 20

// heapState is what releaseMemory reads of the runtime at each check.
type heapState struct {
	autoGCs uint64 // /gc/cycles/automatic: collections the runtime started itself
	free    uint64 // /memory/classes/heap/free: free pages not returned to the OS
	objects uint64 // /memory/classes/heap/objects: live objects and garbage not yet collected
	live    uint64 // /gc/heap/live: what the latest collection found live
}

var heapMetrics = [...]string{
	"/gc/cycles/automatic:gc-cycles",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
}

// heapReader reads heapState through runtime/metrics, which, unlike
// runtime.ReadMemStats, does not stop the world.
type heapReader [len(heapMetrics)]metrics.Sample

func newHeapReader() *heapReader {
	var r heapReader
	for i, name := range heapMetrics {
		r[i].Name = name
	}
	return &r
}

func (r *heapReader) read() heapState {
	metrics.Read(r[:])
	v := func(i int) uint64 {
		if r[i].Value.Kind() != metrics.KindUint64 {
			return 0 // unknown to this runtime: never a reason to act
		}
		return r[i].Value.Uint64()
	}
	return heapState{autoGCs: v(0), free: v(1), objects: v(2), live: v(3)}
}

// worthReleasing says whether to collect and return memory to the OS now,
// given the state at the previous check and now. Two conditions, both
// needed:
//
//   - Quiet: the runtime started no collection since the previous check.
//     A proxy under load collects many times a second; then the runtime's
//     pacing is right and forcing collections would only cost CPU.
//   - Something to gain: the free pages still resident plus the garbage
//     not yet collected (everything above what the last collection found
//     live) reach releaseMinBytes.
//
// After a load peak both hold: the last collections ran with the peak's
// heap goal, nothing allocates enough to trigger another, and the runtime
// keeps up to that goal resident (its scavenger only gives back what
// exceeds ~110% of the goal, and recomputes that only at a collection).
func worthReleasing(prev, now heapState) bool {
	if now.autoGCs != prev.autoGCs {
		return false
	}
	var garbage uint64
	if now.objects > now.live {
		garbage = now.objects - now.live
	}
	return now.free+garbage >= releaseMinBytes
}

// release collects twice and returns every free page to the OS. Two
// collections because sync.Pool keeps what it holds through one (its
// victim cache): the buffers pooled at the peak, megabytes after a
// thousand sessions, go only at the second.
func release() {
	runtime.GC()
	debug.FreeOSMemory() // a collection, then all free pages back to the OS
}

// releaseMemory returns memory that a load peak left behind to the
// operating system once the process has been quiet for a whole period, so
// that RSS comes back down after a burst of connections instead of staying
// near the peak. It checks every period until ctx ends. What it cannot
// return is what the Go runtime keeps for good after a peak: goroutine
// descriptors (~0.5 KiB per goroutine of the peak), poll descriptors
// (~0.6 KiB per socket of the peak) and span metadata.
func releaseMemory(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	r := newHeapReader()
	prev := r.read()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := r.read()
		if worthReleasing(prev, now) {
			release()
			now = r.read()
		}
		prev = now
	}
}
