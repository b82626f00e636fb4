package quantile

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestEncodingRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 1000, 1001, 50_000} {
		var s Summary
		for range n {
			_ = s.Add(r.ExpFloat64() * 100)
		}
		b, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("n=%d MarshalBinary: %v", n, err)
		}
		var got Summary
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("n=%d UnmarshalBinary: %v", n, err)
		}
		if got.Count() != s.Count() || got.Sum() != s.Sum() || got.Exact() != s.Exact() {
			t.Errorf("n=%d: count %d sum %v exact %v, want %d %v %v",
				n, got.Count(), got.Sum(), got.Exact(), s.Count(), s.Sum(), s.Exact())
		}
		for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
			if a, b := got.Quantile(q), s.Quantile(q); a != b {
				t.Errorf("n=%d q=%v: decoded %v, original %v", n, q, a, b)
			}
		}
	}
}

func TestUnmarshalRejectsCorrupt(t *testing.T) {
	enc := func(w wire) []byte {
		b, _ := msgpack.Marshal(&w)
		return b
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"garbage", []byte("\xc1")},
		{"negative count", enc(wire{N: -1})},
		{"count mismatch", enc(wire{N: 3, Min: 1, Max: 1, Sum: 1, Exact: []float64{1}})},
		{"value outside", enc(wire{N: 1, Min: 1, Max: 1, Sum: 5, Exact: []float64{5}})},
		{"bad sketch", enc(wire{N: 5000, Min: 1, Max: 2, Sum: 9, Sketch: []byte{0xff, 0x01}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Summary
			if err := s.UnmarshalBinary(tt.in); !errors.Is(err, ErrCorrupt) {
				t.Errorf("UnmarshalBinary = %v, want ErrCorrupt", err)
			}
		})
	}
}
