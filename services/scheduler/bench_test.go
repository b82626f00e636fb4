package scheduler_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bench"
)

// BenchmarkLateness submits 10,000 delayed items (1 to 5 s, shuffled, mixed
// priorities) to a scheduler without a credit limit on a fresh server, and
// reports how late they were released (Released minus due): late_p50_ms,
// late_p99_ms, late_max_ms, and early, the count released before due,
// which must be 0. seen_p99_ms is the same measured where a consumer of
// READY sees the release, and submit_ms how long submitting took (below
// 1,000, every item was pending at once). With more than one run each
// figure is the worst run's. The measurement is bench.Lateness, which
// `perfpipe bench` prints too. Run it with
//
//	go test -run '^$' -bench Lateness -benchtime 1x ./services/scheduler/
func BenchmarkLateness(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var worst bench.LatenessResult
	for range b.N {
		res, err := bench.Lateness(ctx, bench.LatenessConfig{StoreDir: b.TempDir()})
		if err != nil && !errors.Is(err, bench.ErrEarly) {
			b.Fatalf("Lateness: %v", err)
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
}

// worse keeps the larger of each figure of a and b.
func worse(a, b bench.LatenessResult) bench.LatenessResult {
	return bench.LatenessResult{Items: max(a.Items, b.Items),
		P50: max(a.P50, b.P50), P99: max(a.P99, b.P99), Max: max(a.Max, b.Max),
		SeenP99: max(a.SeenP99, b.SeenP99), Early: max(a.Early, b.Early),
		Extra: max(a.Extra, b.Extra), Submit: max(a.Submit, b.Submit)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
