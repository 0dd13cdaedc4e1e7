//go:build linux

package main

import (
	"math"
	"testing"
)

func TestHistogramBucketsAreOrderedAndClose(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 1000, 65_535, 1_000_000, 123_456_789, math.MaxUint64} {
		i := bucket(v)
		if i < prev {
			t.Fatalf("bucket(%d) = %d, below the bucket of a smaller value (%d)", v, i, prev)
		}
		prev = i
		if got := value(i); math.Abs(got-float64(v)) > float64(v)/64+1 {
			t.Errorf("value(bucket(%d)) = %.0f, more than 1/64 away", v, got)
		}
	}
}

func TestHistogramQuantile(t *testing.T) {
	var h histogram
	for v := uint64(1); v <= 1000; v++ {
		h.add(v * 1000)
	}
	for _, tc := range []struct{ q, want float64 }{{0.5, 500_000}, {0.99, 990_000}, {1, 1_000_000}} {
		if got := h.quantile(tc.q); math.Abs(got-tc.want) > tc.want/50 {
			t.Errorf("quantile(%v) = %.0f, want about %.0f", tc.q, got, tc.want)
		}
	}
	var empty histogram
	if got := empty.quantile(0.99); got != 0 {
		t.Errorf("empty quantile = %v, want 0", got)
	}
}
