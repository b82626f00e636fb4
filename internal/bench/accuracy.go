package bench

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"text/tabwriter"

	"github.com/perfpipe/perfpipe/internal/quantile"
)

// Distribution draws one sample.
type Distribution struct {
	Name string
	Draw func(r *rand.Rand) float64
}

// Distributions are the data shapes of the accuracy table, in ms.
var Distributions = []Distribution{
	{"lognormal", func(r *rand.Rand) float64 { return 10 * math.Exp(r.NormFloat64()) }},
	{"pareto a=1.5", func(r *rand.Rand) float64 { return 1 / math.Pow(1-r.Float64(), 1/1.5) }},
	{"bimodal 90/10", func(r *rand.Rand) float64 {
		if r.Float64() < 0.9 {
			return math.Max(0.1, 5+0.5*r.NormFloat64())
		}
		return math.Max(0.1, 100+10*r.NormFloat64())
	}},
	{"uniform 1-100", func(r *rand.Rand) float64 { return 1 + 99*r.Float64() }},
	{"constant 42", func(*rand.Rand) float64 { return 42 }},
}

// Quantiles are the columns of the accuracy table.
var Quantiles = []float64{0.5, 0.9, 0.99, 0.999}

// AccuracyRow is the relative error of one distribution's quantiles, for
// perfpipe's summary and for the last-100-samples baseline.
type AccuracyRow struct {
	Distribution string
	Samples      int
	Summary      []float64
	Baseline     []float64
}

// lastN is the monitor people write by hand: keep the last n samples,
// sort them, read the quantile.
type lastN struct {
	buf  []float64
	next int
}

func (l *lastN) add(v float64, n int) {
	if len(l.buf) < n {
		l.buf = append(l.buf, v)
		return
	}
	l.buf[l.next] = v
	l.next = (l.next + 1) % n
}

// Accuracy draws n samples of every distribution and compares each
// quantile with the exact nearest rank of all n samples.
func Accuracy(n int, seed uint64) []AccuracyRow {
	rows := make([]AccuracyRow, 0, len(Distributions))
	for _, d := range Distributions {
		r := rand.New(rand.NewPCG(seed, seed+1))
		all := make([]float64, n)
		var (
			s    quantile.Summary
			base lastN
		)
		for i := range all {
			all[i] = d.Draw(r)
			_ = s.Add(all[i])
			base.add(all[i], 100)
		}
		slices.Sort(all)
		slices.Sort(base.buf)

		row := AccuracyRow{Distribution: d.Name, Samples: n}
		for _, q := range Quantiles {
			exact := nearestRank(all, q)
			row.Summary = append(row.Summary, relErr(s.Quantile(q), exact))
			row.Baseline = append(row.Baseline, relErr(nearestRank(base.buf, q), exact))
		}
		rows = append(rows, row)
	}
	return rows
}

func nearestRank(sorted []float64, q float64) float64 {
	return sorted[max(int(math.Ceil(q*float64(len(sorted))))-1, 0)]
}

func relErr(got, want float64) float64 {
	if want == 0 {
		return math.Abs(got)
	}
	return math.Abs(got-want) / math.Abs(want)
}

// PrintAccuracy writes the rows as a table of percentages.
func PrintAccuracy(w io.Writer, rows []AccuracyRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "distribution\tsamples")
	for _, q := range Quantiles {
		fmt.Fprintf(tw, "\tp%g perfpipe\tp%g last-100", q*100, q*100)
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d", r.Distribution, r.Samples)
		for i := range Quantiles {
			fmt.Fprintf(tw, "\t%.3f%%\t%.1f%%", 100*r.Summary[i], 100*r.Baseline[i])
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
