package quantile

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func summaryOf(t testing.TB, vs ...float64) *Summary {
	t.Helper()
	var s Summary
	for _, v := range vs {
		if err := s.Add(v); err != nil {
			t.Fatalf("Add(%v): %v", v, err)
		}
	}
	return &s
}

func seq(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(i + 1)
	}
	return out
}

func TestNearestRank(t *testing.T) {
	ninetyNineOnes := make([]float64, 0, 100)
	for range 99 {
		ninetyNineOnes = append(ninetyNineOnes, 1)
	}
	ninetyNineOnes = append(ninetyNineOnes, 10_000_000)

	tests := []struct {
		name string
		vals []float64
		q    float64
		want float64
	}{
		{"1..100 p95", seq(100), 0.95, 95},
		{"1..100 p50", seq(100), 0.50, 50},
		{"1..100 p100", seq(100), 1, 100},
		{"1..100 p0", seq(100), 0, 1},
		{"outlier p99", ninetyNineOnes, 0.99, 1},
		{"outlier p999", ninetyNineOnes, 0.999, 10_000_000},
		{"single", []float64{7}, 0.999, 7},
		{"empty", nil, 0.5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summaryOf(t, tt.vals...)
			if got := s.Quantile(tt.q); got != tt.want {
				t.Errorf("Quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestMergeSmall(t *testing.T) {
	a := summaryOf(t, 0, 0, 0)
	a.Merge(summaryOf(t, 5))
	if got := a.Quantile(0.5); got != 0 {
		t.Errorf("p50 = %v, want 0", got)
	}
	if got := a.Quantile(0.9); got != 5 {
		t.Errorf("p90 = %v, want 5", got)
	}
	if got := a.Mean(); got != 1.25 {
		t.Errorf("mean = %v, want 1.25", got)
	}
	if a.Min() != 0 || a.Max() != 5 || a.Count() != 4 {
		t.Errorf("min, max, count = %v, %v, %v, want 0, 5, 4", a.Min(), a.Max(), a.Count())
	}
}

func TestFold(t *testing.T) {
	vals := []float64{3, 1, 4, 1, 5, 9, 2, 6}
	folded := summaryOf(t, vals...)
	folded.Fold()
	if folded.Exact() {
		t.Fatal("Exact() = true after Fold, want false")
	}
	if folded.Count() != 8 || folded.Min() != 1 || folded.Max() != 9 || folded.Sum() != 31 {
		t.Errorf("count, min, max, sum = %d, %v, %v, %v, want 8, 1, 9, 31",
			folded.Count(), folded.Min(), folded.Max(), folded.Sum())
	}

	// Merging the folded summary equals merging its values into a sketch.
	big := make([]float64, ExactLimit)
	for i := range big {
		big[i] = float64(i%97) + 0.5
	}
	viaFold, viaValues := summaryOf(t, big...), summaryOf(t, big...)
	viaFold.Merge(folded)
	viaValues.Merge(summaryOf(t, vals...))
	for _, q := range []float64{0, 0.1, 0.5, 0.9, 0.99, 1} {
		if a, b := viaFold.Quantile(q), viaValues.Quantile(q); a != b {
			t.Errorf("q%v: merged folded %v, merged values %v", q, a, b)
		}
	}

	var empty Summary
	empty.Fold()
	if !empty.Exact() {
		t.Error("Fold of an empty summary made a sketch, want it left empty")
	}
}

func TestRejectsBadValues(t *testing.T) {
	var s Summary
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if err := s.Add(v); !errors.Is(err, ErrBadValue) {
			t.Errorf("Add(%v) = %v, want ErrBadValue", v, err)
		}
	}
	if s.Count() != 0 {
		t.Errorf("count = %d after bad values, want 0", s.Count())
	}
}

// TestSketchAccuracy checks that beyond ExactLimit, single-pass and merged
// summaries stay within the relative accuracy of the exact nearest rank.
func TestSketchAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, 20_000)
	for i := range vals {
		vals[i] = math.Exp(r.NormFloat64()) * 10
	}
	one := summaryOf(t, vals...)
	merged := &Summary{}
	for i := 0; i < len(vals); i += 700 {
		merged.Merge(summaryOf(t, vals[i:min(i+700, len(vals))]...))
	}
	sorted := slices.Clone(vals)
	slices.Sort(sorted)

	for _, q := range []float64{0.5, 0.9, 0.95, 0.99, 0.999} {
		exact := sorted[int(math.Ceil(q*float64(len(sorted))))-1]
		for name, s := range map[string]*Summary{"single": one, "merged": merged} {
			got := s.Quantile(q)
			if rel := math.Abs(got-exact) / exact; rel > RelativeAccuracy {
				t.Errorf("%s p%v = %v, exact %v, relative error %.4f", name, q*100, got, exact, rel)
			}
		}
	}
	if one.Exact() || merged.Exact() {
		t.Error("summaries of 20,000 values still exact, want sketch")
	}
}

func TestQuantilesMonotoneAndBounded(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 10, 999, 1001, 5000} {
		var s Summary
		for range n {
			_ = s.Add(r.ExpFloat64())
		}
		prev := math.Inf(-1)
		for _, q := range []float64{0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1} {
			v := s.Quantile(q)
			if v < prev || v < s.Min() || v > s.Max() {
				t.Errorf("n=%d q=%v: %v not in [%v, %v] or below previous %v", n, q, v,
					s.Min(), s.Max(), prev)
			}
			prev = v
		}
	}
}

func BenchmarkAdd(b *testing.B) {
	var s Summary
	for i := 0; i < 2000; i++ {
		_ = s.Add(float64(i))
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		_ = s.Add(float64(i % 10000))
	}
}
