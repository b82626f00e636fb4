package batcher

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/quantile"
)

// simKind is the kind the simulated agent runs.
const simKind = "sleep"

// sim describes a simulated agent fed from a backlog that never runs dry,
// in virtual time: a worker that becomes free takes a batch of the
// policy's MaxCount items at once, so a batch never waits for a worker and
// its latency is its run time. A batch costs overhead plus cost per item,
// each scaled by a uniform factor within 1±jitter. The item cost of a
// batch is the one of the phase in which it starts; phases follow each
// other, each lasting phase.
type sim struct {
	workers  int
	overhead time.Duration
	costs    []time.Duration
	phase    time.Duration
	jitter   float64
	seed     uint64
}

// simResult is what a simulated run measured.
type simResult struct {
	// p95 is over every batch of the run.
	p95 time.Duration
	// steadyP95 is, per phase, over the batches started in its second
	// half.
	steadyP95 []time.Duration
	// counts is the MaxCount the policy gave last in each phase.
	counts []int
	// throughput is the items finished within the run per second.
	throughput float64
}

// worker is a simulated worker: when it is free, and the batch it ran.
type worker struct {
	free   time.Duration
	sample *Sample
}

type workers []*worker

func (w workers) Len() int           { return len(w) }
func (w workers) Less(i, j int) bool { return w[i].free < w[j].free }
func (w workers) Swap(i, j int)      { w[i], w[j] = w[j], w[i] }
func (w *workers) Push(x any)        { *w = append(*w, x.(*worker)) }
func (w *workers) Pop() any {
	old := *w
	x := old[len(old)-1]
	*w = old[:len(old)-1]
	return x
}

// run drives policy through the simulation; observe, when not nil, hears
// every batch's latency at the virtual time the batch finishes.
func (s sim) run(policy Policy, observe func(Sample)) simResult {
	rng := rand.New(rand.NewPCG(s.seed, 1))
	end := s.phase * time.Duration(len(s.costs))
	ws := make(workers, s.workers)
	for i := range ws {
		ws[i] = &worker{}
	}
	heap.Init(&ws)

	var all quantile.Summary
	steady := make([]quantile.Summary, len(s.costs))
	res := simResult{counts: make([]int, len(s.costs))}
	items := 0
	for {
		w := heap.Pop(&ws).(*worker)
		if w.sample != nil {
			items += w.sample.Items
			if observe != nil {
				observe(*w.sample)
			}
		}
		if w.free >= end {
			break
		}

		ph := min(int(w.free/s.phase), len(s.costs)-1)
		n := policy.Limits(simKind).MaxCount
		lat := s.cost(rng, n, s.costs[ph])
		_ = all.Add(lat.Seconds())
		if w.free-time.Duration(ph)*s.phase >= s.phase/2 {
			_ = steady[ph].Add(lat.Seconds())
		}
		res.counts[ph] = n
		w.sample = &Sample{Limit: n, Items: n, Latency: lat}
		w.free += lat
		heap.Push(&ws, w)
	}

	res.p95 = seconds(all.Quantile(0.95))
	for i := range steady {
		res.steadyP95 = append(res.steadyP95, seconds(steady[i].Quantile(0.95)))
	}
	res.throughput = float64(items) / end.Seconds()
	return res
}

// cost is the run time of a batch of n items of cost c each.
func (s sim) cost(rng *rand.Rand, n int, c time.Duration) time.Duration {
	spread := func() float64 { return 1 + s.jitter*(2*rng.Float64()-1) }
	d := float64(s.overhead)*spread() + float64(n)*float64(c)*spread()
	return time.Duration(d)
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// fixed is a policy of n items per batch.
func fixed(n int) Policy {
	return PolicyFunc(func(string) Limits { return Limits{MaxCount: n} })
}

// adaptive runs s with a controller of cfg that starts at start items.
func (s sim) adaptive(cfg AdaptiveConfig, start int) (simResult, *Controller) {
	ctrl := NewController(cfg, fixed(start), nil)
	res := s.run(ctrl, func(smp Sample) { ctrl.Observe(simKind, smp) })
	return res, ctrl
}

// sweepResult is the best fixed batch size of a sweep.
type sweepResult struct {
	size int
	simResult
}

// sweep runs s with every fixed size from 1 to maxSize and returns the one
// of highest throughput whose p95 stays within limit, and the one of
// highest throughput regardless of latency.
func (s sim) sweep(maxSize int, limit time.Duration) (best, any sweepResult) {
	for n := 1; n <= maxSize; n++ {
		r := s.run(fixed(n), nil)
		if r.throughput > any.throughput {
			any = sweepResult{n, r}
		}
		if r.p95 <= limit && r.throughput > best.throughput {
			best = sweepResult{n, r}
		}
	}
	return best, any
}

// benchSim is the scenario of the benchmark and of the sweep test: four
// workers, 20 ms per batch, 1 ms per item for a minute, then 3 ms.
func benchSim() sim {
	return sim{
		workers:  4,
		overhead: 20 * time.Millisecond,
		costs:    []time.Duration{time.Millisecond, 3 * time.Millisecond},
		phase:    time.Minute,
		jitter:   0.2,
		seed:     42,
	}
}

// benchTarget is the p95 the benchmark's controller keeps to.
const benchTarget = 100 * time.Millisecond

// BenchmarkAdaptive runs the controller through benchSim, whose item cost
// triples after a minute, and compares it with a sweep of fixed batch
// sizes. It reports, in virtual time:
//
//   - p95_ms and p95/target: the adaptive p95 over every batch of the run;
//   - items/s and frac_of_best_fixed: its throughput, alone and as a
//     fraction of the best fixed size whose p95 stays within 20% of the
//     target (best_fixed_size);
//   - frac_of_unbounded_fixed: the same against the best fixed size with
//     no bound on latency, which the target rules out.
//
// The time per op is the wall time of one simulated adaptive run.
func BenchmarkAdaptive(b *testing.B) {
	s := benchSim()
	cfg := AdaptiveConfig{TargetP95: benchTarget, MaxCount: 256}
	best, unbounded := s.sweep(cfg.MaxCount, benchTarget*12/10)

	var res simResult
	for b.Loop() {
		res, _ = s.adaptive(cfg, DefaultMaxCount)
	}

	b.ReportMetric(float64(res.p95)/1e6, "p95_ms")
	b.ReportMetric(float64(res.p95)/float64(benchTarget), "p95/target")
	b.ReportMetric(res.throughput, "items/s")
	b.ReportMetric(res.throughput/best.throughput, "frac_of_best_fixed")
	b.ReportMetric(float64(best.size), "best_fixed_size")
	b.ReportMetric(float64(best.p95)/1e6, "best_fixed_p95_ms")
	b.ReportMetric(res.throughput/unbounded.throughput, "frac_of_unbounded_fixed")
	for i, n := range res.counts {
		b.ReportMetric(float64(n), fmt.Sprintf("count_phase%d", i+1))
	}
}
