package quantile

import (
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// ErrCorrupt is returned by UnmarshalBinary for bytes that do not hold a
// consistent summary.
var ErrCorrupt = errors.New("quantile: corrupt summary")

// wire is the encoded form of a Summary: the exact values while it has
// them, or the sketch's own encoding with its index mapping.
type wire struct {
	N      int64     `msgpack:"n"`
	Sum    float64   `msgpack:"sum"`
	Min    float64   `msgpack:"min"`
	Max    float64   `msgpack:"max"`
	Exact  []float64 `msgpack:"exact,omitempty"`
	Sketch []byte    `msgpack:"sketch,omitempty"`
}

// MarshalBinary encodes s so that UnmarshalBinary, here or in another
// process, restores a summary that answers every query the same way.
func (s *Summary) MarshalBinary() ([]byte, error) {
	w := wire{N: s.n, Sum: s.sum, Min: s.min, Max: s.max}
	if s.sketch == nil {
		w.Exact = s.exact
	} else {
		s.sketch.Encode(&w.Sketch, false)
	}
	return msgpack.Marshal(&w)
}

// UnmarshalBinary replaces s with the summary encoded in b.
func (s *Summary) UnmarshalBinary(b []byte) error {
	var w wire
	if err := msgpack.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := w.check(); err != nil {
		return err
	}

	s.Reset()
	s.n, s.sum, s.min, s.max = w.N, w.Sum, w.Min, w.Max
	if w.Sketch == nil {
		s.exact = append(s.exact, w.Exact...)
		return nil
	}
	s.fold()
	if err := s.sketch.DecodeAndMergeWith(w.Sketch); err != nil {
		s.Reset()
		return fmt.Errorf("%w: sketch: %v", ErrCorrupt, err)
	}
	if got := int64(math.Round(s.sketch.GetCount())); got != w.N {
		s.Reset()
		return fmt.Errorf("%w: sketch holds %d values, header says %d", ErrCorrupt, got, w.N)
	}
	return nil
}

func (w *wire) check() error {
	switch {
	case w.N < 0:
		return fmt.Errorf("%w: negative count %d", ErrCorrupt, w.N)
	case w.Sketch == nil && int64(len(w.Exact)) != w.N:
		return fmt.Errorf("%w: %d exact values, header says %d", ErrCorrupt, len(w.Exact), w.N)
	case w.Sketch == nil && len(w.Exact) > ExactLimit:
		return fmt.Errorf("%w: %d exact values, limit %d", ErrCorrupt, len(w.Exact), ExactLimit)
	case w.N > 0 && (w.Min > w.Max || !finite(w.Min, w.Max, w.Sum)):
		return fmt.Errorf("%w: min %v max %v sum %v", ErrCorrupt, w.Min, w.Max, w.Sum)
	}
	for _, v := range w.Exact {
		if !finite(v) || v < w.Min || v > w.Max {
			return fmt.Errorf("%w: value %v outside [%v, %v]", ErrCorrupt, v, w.Min, w.Max)
		}
	}
	return nil
}

func finite(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
