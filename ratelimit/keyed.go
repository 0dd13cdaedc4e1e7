package ratelimit

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxKeys bounds a Keyed limiter's table when the caller gives no
// bound: about 16 MiB of buckets at worst.
const DefaultMaxKeys = 100_000

// keyedShards spreads keys over independently locked tables, so that
// concurrent requests from different clients rarely wait for each other.
const keyedShards = 16

// Keyed limits requests per client address: each address has a token bucket
// of size burst refilled at rps tokens per second, one token per request.
//
// Memory is bounded. A bucket that has refilled to its burst behaves exactly
// like a new one, so it is forgotten: at most once per sweep interval, and
// whenever the table is full. If the table is full of buckets that are all
// still draining (a flood from more distinct addresses than maxKeys), the
// oldest-touched ones are dropped to make room; those clients get a fresh
// bucket, which errs toward letting a request through rather than growing
// without limit.
//
// A Keyed is safe for concurrent use. The zero value is not usable; call
// NewKeyed.
type Keyed struct {
	limit   rate.Limit
	burst   int
	maxKeys int // per shard
	shards  [keyedShards]keyedShard
}

type keyedShard struct {
	mu        sync.Mutex
	m         map[netip.Addr]*keyedEntry
	lastSweep time.Time
}

type keyedEntry struct {
	lim     *rate.Limiter
	touched time.Time
}

// sweepEvery is how often a shard forgets refilled buckets even when it is
// not full.
const sweepEvery = time.Minute

// NewKeyed returns a limiter of rps requests per second with bucket size
// burst (at least 1) for each of at most maxKeys addresses (0 =
// DefaultMaxKeys).
func NewKeyed(rps float64, burst, maxKeys int) *Keyed {
	if burst < 1 {
		burst = 1
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	k := &Keyed{limit: rate.Limit(rps), burst: burst, maxKeys: max(1, maxKeys/keyedShards)}
	for i := range k.shards {
		k.shards[i].m = make(map[netip.Addr]*keyedEntry)
	}
	return k
}

// Allow takes a token from addr's bucket at now. When there is none it
// reports false and how long until there is one (at least a second, for a
// Retry-After header).
func (k *Keyed) Allow(addr netip.Addr, now time.Time) (ok bool, retryAfter time.Duration) {
	sh := &k.shards[shardOf(addr)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[addr]
	if e == nil {
		if len(sh.m) >= k.maxKeys || now.Sub(sh.lastSweep) >= sweepEvery {
			k.sweep(sh, now)
		}
		e = &keyedEntry{lim: rate.NewLimiter(k.limit, k.burst)}
		sh.m[addr] = e
	}
	e.touched = now
	if e.lim.AllowN(now, 1) {
		return true, 0
	}
	// How long until one token: (1 - tokens) / rate.
	wait := time.Duration(float64(time.Second) * (1 - e.lim.TokensAt(now)) / float64(k.limit))
	secs := math.Ceil(wait.Seconds())
	return false, time.Duration(max(secs, 1)) * time.Second
}

// sweep forgets refilled buckets; if the shard is still full, it drops the
// least recently touched quarter.
func (k *Keyed) sweep(sh *keyedShard, now time.Time) {
	sh.lastSweep = now
	full := float64(k.burst)
	for a, e := range sh.m {
		if e.lim.TokensAt(now) >= full {
			delete(sh.m, a)
		}
	}
	if len(sh.m) < k.maxKeys {
		return
	}
	// Still full of draining buckets: a flood of distinct addresses. Drop
	// the entries touched longest ago, down to three quarters.
	target := k.maxKeys * 3 / 4
	cutoff := oldestCutoff(sh.m, len(sh.m)-target)
	for a, e := range sh.m {
		if len(sh.m) <= target {
			break
		}
		if !e.touched.After(cutoff) {
			delete(sh.m, a)
		}
	}
	for a := range sh.m { // the sample misjudged: make room regardless
		if len(sh.m) <= target {
			break
		}
		delete(sh.m, a)
	}
}

// oldestCutoff returns a time such that about n entries were touched at or
// before it, by sampling: exactness does not matter, boundedness does.
func oldestCutoff(m map[netip.Addr]*keyedEntry, n int) time.Time {
	const samples = 64
	var ts [samples]time.Time
	i := 0
	for _, e := range m {
		if i == samples {
			break
		}
		ts[i] = e.touched
		i++
	}
	s := ts[:i]
	// Insertion sort of at most 64 values.
	for a := 1; a < len(s); a++ {
		for b := a; b > 0 && s[b].Before(s[b-1]); b-- {
			s[b], s[b-1] = s[b-1], s[b]
		}
	}
	idx := n * len(s) / max(1, len(m))
	idx = min(max(idx, 0), len(s)-1)
	return s[idx]
}

// Len returns the number of addresses with a bucket.
func (k *Keyed) Len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

func shardOf(a netip.Addr) int {
	b := a.As16()
	// The low bytes vary most between clients, for v4 and v6 alike.
	return int(b[15]^b[14]^b[13]^b[11]) % keyedShards
}
