//go:build soak

package soak

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// memory is where sluice's resident memory is, at one moment: the kernel's
// view from /proc/PID/smaps_rollup, and the Go runtime's from the admin
// /metrics (client_golang derives go_memstats_* from runtime/metrics; the
// comments name the /memory/classes each comes from).
type memory struct {
	// Kernel, in bytes.
	rss, anon, file int64 // file: pages of the binary and libc mapped in

	// Runtime, in bytes.
	objects   int64 // heap/objects: live objects and garbage not yet collected
	unused    int64 // heap/unused: free slots inside spans in use
	free      int64 // heap/free: free pages still resident
	released  int64 // heap/released: free pages given back (not resident)
	stacks    int64 // heap/stacks: goroutine stacks, free ones in the pool included
	mspan     int64 // metadata/mspan: span descriptors, in use and free
	mcache    int64 // metadata/mcache
	gcMeta    int64 // metadata/other: GC and page allocator metadata (mapped, not all resident)
	buckets   int64 // profiling/buckets
	other     int64 // other: poll descriptors, trace and misc off-heap state
	nextGC    int64
	numGC     int64
	threads   int64
	goroutine int64
}

func (m memory) heapInuse() int64 { return m.objects + m.unused }

// readMemory takes a snapshot of pid, whose admin listener is admin.
func readMemory(pid int, admin string) (memory, error) {
	var m memory
	roll, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	kernel := map[string]int64{}
	for line := range strings.Lines(string(roll)) {
		name, rest, ok := strings.Cut(line, ":")
		if f := strings.Fields(rest); ok && len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			kernel[name] = n << 10
		}
	}
	var ok1, ok2 bool
	m.rss, ok1 = kernel["Rss"]
	m.anon, ok2 = kernel["Anonymous"]
	if !ok1 || !ok2 {
		return m, fmt.Errorf("no Rss or Anonymous in /proc/%d/smaps_rollup", pid)
	}
	m.file = m.rss - m.anon

	resp, err := adminClient.Get("http://" + admin + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	v := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		f, _ := strconv.ParseFloat(val, 64)
		v[name] = int64(f)
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("reading metrics: %w", err)
	}
	var heapInuse, heapIdle int64
	for _, f := range []struct {
		name string
		to   *int64
	}{
		{"go_memstats_heap_alloc_bytes", &m.objects},
		{"go_memstats_heap_inuse_bytes", &heapInuse},
		{"go_memstats_heap_idle_bytes", &heapIdle},
		{"go_memstats_heap_released_bytes", &m.released},
		{"go_memstats_stack_inuse_bytes", &m.stacks},
		{"go_memstats_mspan_sys_bytes", &m.mspan},
		{"go_memstats_mcache_sys_bytes", &m.mcache},
		{"go_memstats_gc_sys_bytes", &m.gcMeta},
		{"go_memstats_buck_hash_sys_bytes", &m.buckets},
		{"go_memstats_other_sys_bytes", &m.other},
		{"go_memstats_next_gc_bytes", &m.nextGC},
		{"go_gc_duration_seconds_count", &m.numGC},
		{"go_threads", &m.threads},
		{"go_goroutines", &m.goroutine},
	} {
		n, ok := v[f.name]
		if !ok {
			// A zero would pass the checks that use it.
			return m, fmt.Errorf("no %s in sluice's /metrics", f.name)
		}
		*f.to = n
	}
	m.unused = heapInuse - m.objects
	m.free = heapIdle - m.released
	return m, nil
}

func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) }

func (m memory) String() string {
	return fmt.Sprintf("RSS %s MiB = anon %s + file %s; runtime: heap objects %s, unused %s, free %s (released %s), stacks %s, mspan %s, mcache %s, gc/page metadata %s, profiling %s, other %s; next GC at %s; %d GCs, %d threads, %d goroutines",
		mib(m.rss), mib(m.anon), mib(m.file),
		mib(m.objects), mib(m.unused), mib(m.free), mib(m.released), mib(m.stacks),
		mib(m.mspan), mib(m.mcache), mib(m.gcMeta), mib(m.buckets), mib(m.other),
		mib(m.nextGC), m.numGC, m.threads, m.goroutine)
}

// minus explains the change of RSS from before to m by the runtime's
// classes.
func (m memory) minus(before memory) string {
	d := memory{
		rss: m.rss - before.rss, anon: m.anon - before.anon, file: m.file - before.file,
		objects: m.objects - before.objects, unused: m.unused - before.unused,
		free: m.free - before.free, stacks: m.stacks - before.stacks,
		mspan:  m.mspan + m.mcache - before.mspan - before.mcache,
		gcMeta: m.gcMeta - before.gcMeta, other: m.other - before.other, buckets: m.buckets - before.buckets,
	}
	heap := d.objects + d.unused + d.free + d.stacks
	kept := d.mspan + d.gcMeta + d.other + d.buckets
	return fmt.Sprintf("RSS %s MiB = file %s (code and data pages first touched) + anon %s: "+
		"heap %s (objects %s, unused %s, free %s, stacks %s), "+
		"runtime metadata, never returned %s (mspan %s, gc/page %s, other %s, profiling %s), "+
		"rest %s (C and thread memory; metadata mapped but not touched counts negative)",
		signed(d.rss), signed(d.file), signed(d.anon),
		signed(heap), signed(d.objects), signed(d.unused), signed(d.free), signed(d.stacks),
		signed(kept), signed(d.mspan), signed(d.gcMeta), signed(d.other), signed(d.buckets),
		signed(d.anon-heap-kept))
}

func signed(n int64) string {
	if n < 0 {
		return mib(n)
	}
	return "+" + mib(n)
}
