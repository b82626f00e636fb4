package aggregator

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// t0 is a bucket boundary for every resolution the tests use.
var t0 = time.Date(2026, 3, 4, 5, 6, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func timingSample(ts time.Time, ms float64) sample {
	return sample{at: ts, ms: ms, status: events.TimingOK, timing: true}
}

func TestWindowBucketsAligned(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration // offsets from t0
		end     time.Duration
		want    int64
	}{
		{"same bucket", []time.Duration{100 * time.Millisecond, 900 * time.Millisecond},
			time.Second, 2},
		{"boundary opens next bucket", []time.Duration{999 * time.Millisecond, time.Second},
			time.Second, 1},
		{"both complete", []time.Duration{999 * time.Millisecond, time.Second},
			2 * time.Second, 2},
		{"end truncated to bucket", []time.Duration{100 * time.Millisecond, 1200 * time.Millisecond},
			1700 * time.Millisecond, 1},
		{"open bucket not read", []time.Duration{1200 * time.Millisecond},
			1500 * time.Millisecond, 0},
		{"oldest bucket read", []time.Duration{0}, 10 * time.Second, 1},
		{"bucket before window not read", []time.Duration{0}, 11 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWindow(10*time.Second, time.Second, 5*time.Second)
			for _, off := range tt.samples {
				if !w.add(timingSample(at(off), 1), at(2*time.Second)) {
					t.Fatalf("add at +%s: dropped, want accepted", off)
				}
			}
			if got := w.read(at(tt.end)).n; got != tt.want {
				t.Errorf("read(+%s).n = %d, want %d", tt.end, got, tt.want)
			}
		})
	}
}

func TestWindowAcceptRange(t *testing.T) {
	now := at(30*time.Second + 500*time.Millisecond) // oldest bucket starts at +20s
	tests := []struct {
		name string
		at   time.Time
		want bool
	}{
		{"now", now, true},
		{"start of oldest bucket", at(20 * time.Second), true},
		{"just before the window", at(20*time.Second - time.Nanosecond), false},
		{"a minute old", now.Add(-time.Minute), false},
		{"max future", now.Add(5 * time.Second), true},
		{"past max future", now.Add(5*time.Second + time.Nanosecond), false},
		{"zero time", time.Time{}, false},
		{"year 9999", time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWindow(10*time.Second, time.Second, 5*time.Second)
			if got := w.add(timingSample(tt.at, 1), now); got != tt.want {
				t.Errorf("add(%s) = %v, want %v", tt.at, got, tt.want)
			}
		})
	}
}

func TestWindowFutureSampleReadLater(t *testing.T) {
	w := newWindow(10*time.Second, time.Second, 5*time.Second)
	now := at(30 * time.Second)

	// Fill every bucket a snapshot at now can read, then one ahead.
	for off := 20 * time.Second; off < 30*time.Second; off += time.Second {
		w.add(timingSample(at(off), 1), now)
	}
	w.add(timingSample(now.Add(5*time.Second), 2), now)

	if got := w.read(now).n; got != 10 {
		t.Errorf("read(now).n = %d, want 10 (future sample must not evict a bucket)", got)
	}
	if got := w.read(now.Add(6 * time.Second)); got.n != 5 || got.lat.Max() != 2 {
		t.Errorf("read(now+6s) = n %d max %v, want n 5 max 2", got.n, got.lat.Max())
	}
}

func TestWindowQuantiles(t *testing.T) {
	seq := func(lo, hi int) []float64 {
		var v []float64
		for i := lo; i <= hi; i++ {
			v = append(v, float64(i))
		}
		return v
	}
	ones := slices.Repeat([]float64{1}, 99)
	tests := []struct {
		name    string
		buckets [][]float64 // ms per bucket
		want    events.Snapshot
	}{
		{
			name:    "1 to 100",
			buckets: [][]float64{seq(1, 30), seq(31, 100)},
			want: events.Snapshot{Count: 100, MinMs: 1, MaxMs: 100, MeanMs: 50.5,
				P50Ms: 50, P90Ms: 90, P95Ms: 95, P99Ms: 99, P999Ms: 100},
		},
		{
			name:    "one outlier of 10000 s",
			buckets: [][]float64{ones, {10_000_000}},
			want: events.Snapshot{Count: 100, MinMs: 1, MaxMs: 10_000_000, MeanMs: 100_000.99,
				P50Ms: 1, P90Ms: 1, P95Ms: 1, P99Ms: 1, P999Ms: 10_000_000},
		},
		{
			name:    "zeros merged with five",
			buckets: [][]float64{{0, 0, 0}, {5}},
			want: events.Snapshot{Count: 4, MinMs: 0, MaxMs: 5, MeanMs: 1.25,
				P50Ms: 0, P90Ms: 5, P95Ms: 5, P99Ms: 5, P999Ms: 5},
		},
		{
			name:    "single value",
			buckets: [][]float64{{7}},
			want: events.Snapshot{Count: 1, MinMs: 7, MaxMs: 7, MeanMs: 7,
				P50Ms: 7, P90Ms: 7, P95Ms: 7, P99Ms: 7, P999Ms: 7},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &group{win: newWindow(time.Minute, time.Second, 5*time.Second)}
			now := at(time.Duration(len(tt.buckets)) * time.Second)
			for i, b := range tt.buckets {
				for _, ms := range b {
					g.win.add(timingSample(at(time.Duration(i)*time.Second), ms), now)
				}
			}
			got := g.snapshot(now)
			checkFigures(t, got, tt.want)
		})
	}
}

// checkFigures compares the count and latency figures of two snapshots.
func checkFigures(t *testing.T, got, want events.Snapshot) {
	t.Helper()
	if got.Count != want.Count {
		t.Errorf("count = %d, want %d", got.Count, want.Count)
	}
	for _, f := range []struct {
		name      string
		got, want float64
	}{
		{"min", got.MinMs, want.MinMs}, {"max", got.MaxMs, want.MaxMs},
		{"mean", got.MeanMs, want.MeanMs}, {"p50", got.P50Ms, want.P50Ms},
		{"p90", got.P90Ms, want.P90Ms}, {"p95", got.P95Ms, want.P95Ms},
		{"p99", got.P99Ms, want.P99Ms}, {"p999", got.P999Ms, want.P999Ms},
	} {
		if math.Abs(f.got-f.want) > 1e-9*math.Max(1, math.Abs(f.want)) {
			t.Errorf("%s = %v ms, want %v", f.name, f.got, f.want)
		}
	}
}

func TestWindowMergeMatchesSinglePass(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	uniform := func() float64 { return math.Round(rng.Float64()*1e6) / 1e3 }
	lognormal := func() float64 { return math.Exp(rng.NormFloat64()*1.2 + 2) }
	tests := []struct {
		name    string
		n       int
		value   func() float64
		relTol  float64
		buckets int
	}{
		{"exact below the limit", 999, uniform, 0, 10},
		{"exact in one bucket", 1000, uniform, 0, 1},
		{"sketch over 5000 lognormal", 5000, lognormal, quantile.RelativeAccuracy, 30},
		{"sketch in few big buckets", 5000, lognormal, quantile.RelativeAccuracy, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWindow(time.Minute, time.Second, 5*time.Second)
			now := at(time.Minute)
			var all []float64
			var single quantile.Summary
			for range tt.n {
				v := tt.value()
				all = append(all, v)
				_ = single.Add(v)
				bucket := time.Duration(rng.IntN(tt.buckets)) * time.Second
				w.add(timingSample(now.Add(-time.Minute+bucket), v), now)
			}
			slices.Sort(all)

			f := w.read(now)
			if f.lat.Count() != int64(tt.n) {
				t.Fatalf("count = %d, want %d", f.lat.Count(), tt.n)
			}
			for _, q := range []float64{0, 0.5, 0.9, 0.95, 0.99, 0.999, 1} {
				exact := all[max(int(math.Ceil(q*float64(tt.n)))-1, 0)]
				got := f.lat.Quantile(q)
				if !within(got, exact, tt.relTol) {
					t.Errorf("q%v merged = %v, exact nearest rank %v (tolerance %v)",
						q, got, exact, tt.relTol)
				}
				if one := single.Quantile(q); !within(got, one, 2*tt.relTol) {
					t.Errorf("q%v merged = %v, single pass %v", q, got, one)
				}
			}
		})
	}
}

func within(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Abs(want)+1e-12
}

func TestWindowAgesOut(t *testing.T) {
	g := &group{win: newWindow(10*time.Second, time.Second, 5*time.Second)}
	for i := range 50 {
		g.win.add(timingSample(at(0), float64(i)), at(0))
	}
	if got := g.snapshot(at(time.Second)); got.Count != 50 || got.P95Ms == 0 {
		t.Fatalf("fresh snapshot count %d p95 %v, want 50 and non-zero", got.Count, got.P95Ms)
	}

	got := g.snapshot(at(11 * time.Second))
	want := events.Snapshot{} // count 0 and every latency figure zero
	checkFigures(t, got, want)
	if got.Rate != 0 || got.Errors != 0 {
		t.Errorf("aged-out rate %v errors %d, want 0 and 0", got.Rate, got.Errors)
	}
}

func TestWindowRate(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		end     time.Duration
		want    float64
	}{
		{"first bucket only", []time.Duration{0, 0, 0, 0}, time.Second, 4},
		{"since the first sample", []time.Duration{0, 0, 0, 0}, 4 * time.Second, 1},
		{"whole window", []time.Duration{0, 5 * time.Second}, 10 * time.Second, 0.2},
		{"window slid past the first sample", []time.Duration{0, 5 * time.Second},
			12 * time.Second, 0.1},
		{"only future samples", []time.Duration{3 * time.Second}, time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWindow(10*time.Second, time.Second, 5*time.Second)
			for _, off := range tt.samples {
				w.add(timingSample(at(off), 1), at(off))
			}
			g := &group{win: w}
			if got := g.snapshot(at(tt.end)).Rate; !within(got, tt.want, 1e-9) {
				t.Errorf("rate at +%s = %v, want %v", tt.end, got, tt.want)
			}
		})
	}
}
