package config

import (
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "512B", want: 512},
		{in: "64KiB", want: 64 << 10},
		{in: "10MiB", want: 10 << 20},
		{in: "2GiB", want: 2 << 30},
		{in: "10 MiB", want: 10 << 20},
		{in: "1kib", want: 1 << 10},
		{in: "1KB", want: 1000},
		{in: "3MB", want: 3e6},
		{in: "1GB", want: 1e9},
		{in: "8k", want: 8 << 10},
		{in: "8K", want: 8 << 10},
		{in: "1m", want: 1 << 20},
		{in: "1G", want: 1 << 30},
		{in: "9223372036854775807", want: 1<<63 - 1},
		{in: "8589934591GiB", want: 8589934591 << 30},
		{in: "8589934592GiB", err: `"8589934592GiB": too large`},
		{in: "9223372036854775808", err: `"9223372036854775808": too large`},
		{in: "-1", err: `"-1": must not be negative`},
		{in: "-1KiB", err: `"-1KiB": must not be negative`},
		{in: "", err: `"": not a size (write e.g. 512, 64KiB or 10MiB)`},
		{in: "MiB", err: `"MiB": not a size (write e.g. 512, 64KiB or 10MiB)`},
		{in: "1.5MiB", err: `"1.5MiB": a size is a whole number (write e.g. 1536KiB for 1.5MiB)`},
		{in: "1TiB", err: `"1TiB": unknown unit "TiB" (use KiB, MiB, GiB, KB, MB, GB, or k, m, g)`},
		{in: "1kb2", err: `"1kb2": unknown unit "kb2" (use KiB, MiB, GiB, KB, MB, GB, or k, m, g)`},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("parseSize(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "0", want: 0},
		{in: "0s", want: 0},
		{in: "30s", want: 30 * time.Second},
		{in: "5m", want: 5 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: "30", err: `"30": a duration needs a unit (write e.g. 30s)`},
		{in: "-1s", err: `"-1s": must not be negative`},
		{in: "soon", err: `"soon": not a duration (write e.g. 30s, 5m or 1h30m)`},
		{in: "1d", err: `"1d": not a duration (write e.g. 30s, 5m or 1h30m)`},
		{in: "", err: `"": not a duration (write e.g. 30s, 5m or 1h30m)`},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("parseDuration(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseDuration(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRateAndCount(t *testing.T) {
	t.Parallel()
	rates := []struct {
		in   string
		want float64
		err  bool
	}{
		{"0", 0, false}, {"100", 100, false}, {"0.5", 0.5, false}, {"1e3", 1000, false},
		{"-1", 0, true}, {"NaN", 0, true}, {"inf", 0, true}, {"1e10", 0, true}, {"x", 0, true},
	}
	for _, tt := range rates {
		got, err := parseRate(tt.in)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("parseRate(%q) = %v, %v", tt.in, got, err)
		}
	}
	counts := []struct {
		in   string
		want int
		err  bool
	}{
		{"0", 0, false}, {"7", 7, false}, {"-1", 0, true}, {"1.0", 0, true}, {"", 0, true},
	}
	for _, tt := range counts {
		got, err := parseCount(tt.in)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("parseCount(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestDefaultBurst(t *testing.T) {
	t.Parallel()
	for rate, want := range map[float64]int{0: 1, 0.2: 1, 1: 1, 1.5: 2, 100: 100, maxRate: int(maxRate)} {
		if got := defaultBurst(rate); got != want {
			t.Errorf("defaultBurst(%v) = %d, want %d", rate, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	fields := []field{{name: "upstreams"}, {name: "hosts"}, {name: "path"}, {name: "strip_prefix"}, {name: "max_body"}}
	for key, want := range map[string]string{
		"upstream":     "upstreams",
		"Upstreams":    "upstreams",
		"host":         "hosts",
		"paht":         "path",
		"strip-prefix": "strip_prefix",
		"maxbody":      "max_body",
		"name":         "",
		"bogus":        "",
	} {
		if got := suggest(key, fields); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}
