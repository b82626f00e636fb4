package bench

import (
	"bytes"
	"strings"
	"testing"

	"github.com/perfpipe/perfpipe/internal/quantile"
)

func TestAccuracyWithinPromise(t *testing.T) {
	for _, n := range []int{500, 100_000} {
		for _, row := range Accuracy(n, 7) {
			for i, q := range Quantiles {
				limit := quantile.RelativeAccuracy
				if n <= quantile.ExactLimit {
					limit = 0
				}
				if got := row.Summary[i]; got > limit {
					t.Errorf("n=%d %s p%g: relative error %.5f > %.3f", n,
						row.Distribution, q*100, got, limit)
				}
			}
		}
	}
}

func TestPrintAccuracy(t *testing.T) {
	var b bytes.Buffer
	if err := PrintAccuracy(&b, Accuracy(2000, 1)); err != nil {
		t.Fatal(err)
	}
	for _, d := range Distributions {
		if !strings.Contains(b.String(), d.Name) {
			t.Errorf("table lacks %s:\n%s", d.Name, b.String())
		}
	}
}
