package scheduler_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bench"
)

// BenchmarkLateness submits 10,000 delayed items with mixed priorities to
// a scheduler without a credit limit on a fresh server, and reports how
// late they were released (Released minus due). In "spread" the delays
// run from 1 to 5 s, shuffled; in "burst" every item is due at the same
// instant 2 s after submitting began, as work held until midnight is.
// The figures: late_p50_ms, late_p99_ms, late_max_ms; early, the count
// released before due, which must be 0; seen_p99_ms, the lateness where
// a consumer of READY sees the release; submit_ms, how long submitting
// took (below the shortest delay, every item was pending at once); and
// items/s, the releases per second from the first to the last (in a
// burst, the release path's throughput). With more than one run each
// figure is the worst run's. The measurement is bench.Lateness, which
// `perfpipe bench` prints too. Run it with
//
//	go test -run '^$' -bench Lateness -benchtime 1x ./services/scheduler/
func BenchmarkLateness(b *testing.B) {
	cases := []struct {
		name string
		cfg  bench.LatenessConfig
	}{
		{"spread", bench.LatenessConfig{}},
		{"burst", bench.LatenessConfig{Burst: true, MinDelay: 2 * time.Second}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) { benchLateness(b, tc.cfg) })
	}
}

func benchLateness(b *testing.B, cfg bench.LatenessConfig) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var worst bench.LatenessResult
	for i := range b.N {
		cfg.StoreDir = b.TempDir()
		res, err := bench.Lateness(ctx, cfg)
		if err != nil && !errors.Is(err, bench.ErrEarly) {
			b.Fatalf("Lateness: %v", err)
		}
		if i == 0 {
			worst = res
		}
		worst = worse(worst, res)
	}

	if worst.Early > 0 {
		b.Errorf("%d items released before due, want none", worst.Early)
	}
	b.ReportMetric(ms(worst.P50), "late_p50_ms")
	b.ReportMetric(ms(worst.P99), "late_p99_ms")
	b.ReportMetric(ms(worst.Max), "late_max_ms")
	b.ReportMetric(ms(worst.SeenP99), "seen_p99_ms")
	b.ReportMetric(float64(worst.Early), "early")
	b.ReportMetric(ms(worst.Submit), "submit_ms")
	b.ReportMetric(worst.Rate, "items/s")
}

// worse keeps the worse of each figure of a and b: the larger, or for the
// release rate the smaller.
func worse(a, b bench.LatenessResult) bench.LatenessResult {
	return bench.LatenessResult{Items: max(a.Items, b.Items),
		P50: max(a.P50, b.P50), P99: max(a.P99, b.P99), Max: max(a.Max, b.Max),
		SeenP99: max(a.SeenP99, b.SeenP99), Early: max(a.Early, b.Early),
		Extra: max(a.Extra, b.Extra), Submit: max(a.Submit, b.Submit),
		Span: max(a.Span, b.Span), Rate: min(a.Rate, b.Rate)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
