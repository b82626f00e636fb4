// Package quantile summarises a stream of numbers: count, sum, min, max and
// nearest-rank quantiles, exact while it holds at most ExactLimit values and
// within RelativeAccuracy beyond that, through a DDSketch. Summaries merge,
// so windows and partitions can be combined.
//
// Quantile definition (nearest rank): the q-quantile of n values is the
// smallest value v such that at least ceil(q*n) values are <= v. Results
// always lie within [Min, Max] and never decrease as q grows.
package quantile

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/DataDog/sketches-go/ddsketch"
)

// ExactLimit is how many values a summary keeps verbatim before it folds
// them into a sketch.
const ExactLimit = 1000

// RelativeAccuracy is the promised relative error of quantiles once a
// summary has switched to a sketch.
const RelativeAccuracy = 0.01

// sketchAccuracy is the sketch's own accuracy: half the promise, so that
// float rounding at bucket edges never takes a result past it.
const sketchAccuracy = RelativeAccuracy / 2

// maxBins bounds a sketch's memory: 4096 bins at 0.5% cover values over
// about 17 orders of magnitude before the lowest bins collapse.
const maxBins = 4096

// ErrBadValue is returned by Add for NaN or infinite values.
var ErrBadValue = errors.New("quantile: value is NaN or infinite")

// Summary accumulates values. The zero value is empty and ready to use.
type Summary struct {
	exact  []float64
	sorted bool
	sketch *ddsketch.DDSketch

	n        int64
	sum      float64
	min, max float64
}

// Add records v.
func (s *Summary) Add(v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%w: %v", ErrBadValue, v)
	}
	s.observe(v, 1, v, v)
	if s.sketch == nil {
		s.exact = append(s.exact, v)
		s.sorted = false
		if len(s.exact) > ExactLimit {
			s.fold()
		}
		return nil
	}
	return s.sketch.Add(v)
}

func (s *Summary) observe(sum float64, n int64, lo, hi float64) {
	if s.n == 0 || lo < s.min {
		s.min = lo
	}
	if s.n == 0 || hi > s.max {
		s.max = hi
	}
	s.n += n
	s.sum += sum
}

// fold moves the exact values into a new sketch.
func (s *Summary) fold() {
	sk, err := ddsketch.LogCollapsingLowestDenseDDSketch(sketchAccuracy, maxBins)
	if err != nil {
		panic(fmt.Sprintf("quantile: sketch config: %v", err)) // constant arguments
	}
	for _, v := range s.exact {
		_ = sk.Add(v) // finite by Add's check
	}
	s.sketch = sk
	s.exact = nil
}

// Fold gives up exactness to save memory: it moves the exact values into
// a sketch, so that quantiles are within RelativeAccuracy from then on and
// memory follows the bins used rather than the values kept. Merging a
// folded summary gives the same sketch as merging the values it held. An
// empty summary or one with a sketch is left as it is.
func (s *Summary) Fold() {
	if s.sketch == nil && s.n > 0 {
		s.fold()
	}
}

// Merge adds every value of o to s. o is not changed.
func (s *Summary) Merge(o *Summary) {
	if o == nil || o.n == 0 {
		return
	}
	s.observe(o.sum, o.n, o.min, o.max)
	if s.sketch == nil && o.sketch == nil && len(s.exact)+len(o.exact) <= ExactLimit {
		s.exact = append(s.exact, o.exact...)
		s.sorted = false
		return
	}
	if s.sketch == nil {
		s.fold()
	}
	if o.sketch != nil {
		_ = s.sketch.MergeWith(o.sketch) // same mapping by construction
		return
	}
	for _, v := range o.exact {
		_ = s.sketch.Add(v)
	}
}

// Reset empties s and keeps its buffers.
func (s *Summary) Reset() {
	s.exact = s.exact[:0]
	s.sketch = nil
	s.n, s.sum, s.min, s.max = 0, 0, 0, 0
}

// Count is the number of values.
func (s *Summary) Count() int64 { return s.n }

// Sum is the sum of the values.
func (s *Summary) Sum() float64 { return s.sum }

// Min is the smallest value, or 0 when empty.
func (s *Summary) Min() float64 { return s.min }

// Max is the largest value, or 0 when empty.
func (s *Summary) Max() float64 { return s.max }

// Mean is the arithmetic mean, or 0 when empty.
func (s *Summary) Mean() float64 {
	if s.n == 0 {
		return 0
	}
	return s.sum / float64(s.n)
}

// Exact reports whether quantiles are exact.
func (s *Summary) Exact() bool { return s.sketch == nil }

// Quantile returns the nearest-rank q-quantile for q in [0, 1], or 0 when
// the summary is empty. q outside [0, 1] is clamped.
func (s *Summary) Quantile(q float64) float64 {
	if s.n == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	if s.sketch == nil {
		if !s.sorted {
			slices.Sort(s.exact)
			s.sorted = true
		}
		rank := int(math.Ceil(q*float64(len(s.exact)))) - 1
		return s.exact[max(rank, 0)]
	}
	v, err := s.sketch.GetValueAtQuantile(q)
	if err != nil {
		return s.max
	}
	return min(max(v, s.min), s.max)
}
