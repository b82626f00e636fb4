package bench

import (
	"cmp"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/perfpipe/perfpipe/services/batcher"
)

// PrintAdaptive writes a row per run, the best fixed sizes, the adaptive
// run's ratios against them and its batch size over time.
func PrintAdaptive(w io.Writer, r AdaptiveResult) error {
	printScenario(w, r.Config)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := fmt.Sprintf("run\tp95\tp95/target\tbatches\tover %.1fx\titems/s",
		1+P95Tolerance)
	for i := range r.Adaptive.Phases {
		header += fmt.Sprintf("\tphase %d: p95\tsize\titems/s", i+1)
	}
	fmt.Fprintln(tw, header)
	for _, f := range r.Fixed {
		printRun(tw, r, fmt.Sprintf("fixed %d", f.Size), f)
	}
	printRun(tw, r, "adaptive", r.Adaptive)
	if err := tw.Flush(); err != nil {
		return err
	}

	printVerdict(w, r)
	var counts []string
	for _, n := range r.Adaptive.Counts {
		counts = append(counts, fmt.Sprint(n))
	}
	_, err := fmt.Fprintf(w, "adaptive batch size each second: %s\n", strings.Join(counts, " "))
	return err
}

// printScenario writes what every run did.
func printScenario(w io.Writer, c AdaptiveConfig) {
	costs := make([]string, len(c.Costs))
	for i, d := range c.Costs {
		costs[i] = d.String()
	}
	fmt.Fprintf(w, "sleep items of %s each, %s per phase, %d outstanding, one agent worker, "+
		"linger %s; adaptive: target p95 %s, sizes %d-%d, starting at %d, window %d batches\n",
		strings.Join(costs, " then "), c.Phase, c.Outstanding, c.Linger, c.Target,
		batcher.DefaultAdaptiveMinCount, c.MaxCount, min(c.MaxCount, batcher.DefaultMaxCount),
		cmp.Or(c.Window, batcher.DefaultAdaptiveWindow))
	fmt.Fprintln(w, "p95: of batch latency, first item started to last finished, over the "+
		"batches started in the run (over: how many took longer than the tolerance); "+
		"per phase, over those of its second half; "+
		"size: mean items per batch there (adaptive: its count at the phase's end)")
}

// printRun writes one run's row. The size of a phase is the mean over its
// steady batches; for the adaptive run the controller's count at the end
// of the phase follows in brackets.
func printRun(w io.Writer, r AdaptiveResult, name string, run AdaptiveRun) {
	fmt.Fprintf(w, "%s\t%s\t%.2f\t%d\t%d\t%.0f", name, roundDuration(run.P95),
		float64(run.P95)/float64(r.Config.Target), run.Batches, run.Over, run.PerSecond)
	for _, p := range run.Phases {
		size := fmt.Sprintf("%.1f", p.MeanSize)
		if run.Size == 0 {
			size += fmt.Sprintf(" (%d)", p.Count)
		}
		fmt.Fprintf(w, "\t%s\t%s\t%.0f", roundDuration(p.SteadyP95), size, p.PerSecond)
	}
	fmt.Fprintln(w)
}

// printVerdict writes the best fixed sizes and the adaptive ratios.
func printVerdict(w io.Writer, r AdaptiveResult) {
	v := r.Verdict()
	if v.Best.Size > 0 {
		fmt.Fprintf(w, "best fixed size with p95 at most %.1fx the %s target: %d "+
			"(p95 %s, %.0f items/s)\n", 1+P95Tolerance, r.Config.Target, v.Best.Size,
			roundDuration(v.Best.P95), v.Best.PerSecond)
	} else {
		fmt.Fprintf(w, "no fixed size kept p95 within %.1fx the %s target\n",
			1+P95Tolerance, r.Config.Target)
	}
	fmt.Fprintf(w, "best fixed size regardless of latency: %d (p95 %s, %.0f items/s)\n",
		v.Unbounded.Size, roundDuration(v.Unbounded.P95), v.Unbounded.PerSecond)
	fmt.Fprintf(w, "adaptive p95 / target: %.2f (goal %.1f-%.1f): %s\n", v.P95Ratio,
		1-P95Tolerance, 1+P95Tolerance, met(v.P95Met()))
	fmt.Fprintf(w, "adaptive throughput / best fixed within target: %.2f (goal >= %.1f): %s\n",
		v.VsBest, MinThroughput, met(v.ThroughputMet()))
	fmt.Fprintf(w, "adaptive throughput / best fixed regardless of latency: %.2f\n",
		v.VsUnbounded)
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
