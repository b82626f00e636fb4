package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestLatenessReleasesEveryItemOnTime runs the lateness bench with few
// items and short delays, spread and in a burst: every item is released
// once, none early, the quantiles are ordered and the rate is measured.
func TestLatenessReleasesEveryItemOnTime(t *testing.T) {
	tests := []struct {
		name string
		cfg  LatenessConfig
	}{
		{"spread", LatenessConfig{MinDelay: 200 * time.Millisecond,
			Spread: 300 * time.Millisecond}},
		{"burst", LatenessConfig{MinDelay: 500 * time.Millisecond, Burst: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := tt.cfg
			cfg.Items, cfg.Settle, cfg.StoreDir = 300, 20*time.Second, t.TempDir()
			res, err := Lateness(ctx, cfg)
			if err != nil {
				t.Fatalf("Lateness: %v (result %+v)", err, res)
			}
			checkLateness(t, res)
		})
	}
}

func checkLateness(t *testing.T, res LatenessResult) {
	t.Helper()
	if res.Items != 300 || res.Early != 0 || res.Extra != 0 {
		t.Errorf("result = %+v, want 300 items, each released once and none early", res)
	}
	if res.P50 < 0 || res.P50 > res.P99 || res.P99 > res.Max || res.SeenP99 < res.P50 {
		t.Errorf("result = %+v, want 0 <= p50 <= p99 <= max and seen p99 >= p50", res)
	}
	if res.Span <= 0 || res.Rate <= 0 {
		t.Errorf("result = %+v, want a positive span and rate", res)
	}

	var b bytes.Buffer
	if err := PrintLateness(&b, res); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.Contains(got, "early 0 of 300") ||
		!strings.Contains(got, "items/s") {
		t.Errorf("PrintLateness = %q, want it to say early 0 of 300 and the items/s", got)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	tests := []struct {
		p    int
		want time.Duration
	}{{1, 1}, {50, 5}, {99, 10}, {100, 10}, {0, 1}}
	for _, tt := range tests {
		if got := percentile(ds, tt.p); got != tt.want {
			t.Errorf("percentile(1..10, %d) = %d, want %d", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("percentile(nil, 99) = %d, want 0", got)
	}
}
