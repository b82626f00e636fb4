package bench

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// TestAdaptiveRunsBothModes runs a tiny scenario, one fixed size and the
// controller, through the real services: each run has batches in both
// phases, no batch larger than its limit, and a positive rate.
func TestAdaptiveRunsBothModes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Adaptive(ctx, AdaptiveConfig{
		Phase: 400 * time.Millisecond, Costs: []time.Duration{0, time.Millisecond},
		Sizes: []int{4}, MaxCount: 8, Outstanding: 32, Linger: 50 * time.Millisecond,
		Settle: 10 * time.Second, StoreDir: t.TempDir(),
	})
	if err != nil {
		t.Fatalf("Adaptive: %v", err)
	}
	if len(res.Fixed) != 1 || res.Fixed[0].Size != 4 || res.Adaptive.Size != 0 {
		t.Fatalf("runs: fixed %+v, adaptive size %d: want one fixed run of 4 and "+
			"an adaptive one", res.Fixed, res.Adaptive.Size)
	}

	runs := []struct {
		name  string
		run   AdaptiveRun
		limit int
	}{{"fixed 4", res.Fixed[0], 4}, {"adaptive", res.Adaptive, 8}}
	for _, r := range runs {
		if r.run.Batches < 1 || r.run.PerSecond <= 0 || r.run.P95 <= 0 {
			t.Errorf("%s: %d batches, %.0f items/s, p95 %s: want all positive",
				r.name, r.run.Batches, r.run.PerSecond, r.run.P95)
		}
		if len(r.run.Phases) != 2 {
			t.Fatalf("%s: %d phases, want 2", r.name, len(r.run.Phases))
		}
		for i, p := range r.run.Phases {
			if p.MeanSize <= 0 || p.MeanSize > float64(r.limit) || p.Count < 1 {
				t.Errorf("%s phase %d: %+v, want a mean size within 0-%d and a count",
					r.name, i+1, p, r.limit)
			}
		}
	}
}

func TestAdaptiveConfigRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  AdaptiveConfig
	}{
		{"backlog below two batches", AdaptiveConfig{Sizes: []int{64}, Outstanding: 100}},
		{"cost not whole ms", AdaptiveConfig{Costs: []time.Duration{1500 * time.Microsecond}}},
		{"negative cost", AdaptiveConfig{Costs: []time.Duration{-time.Millisecond}}},
		{"size zero", AdaptiveConfig{Sizes: []int{0}}},
		{"negative window", AdaptiveConfig{Window: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.withDefaults().validate(); err == nil {
				t.Errorf("validate(%+v) = nil, want an error", tt.cfg)
			}
		})
	}
	if err := (AdaptiveConfig{}).withDefaults().validate(); err != nil {
		t.Errorf("validate(defaults) = %v, want nil", err)
	}
}

// TestBatchLogSpans checks how results are grouped into batches: a batch
// spans its earliest start to its latest finish, mixes phases as -1, and
// is left out until every item has its result.
func TestBatchLogSpans(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := newBatchLog()
	for id, phase := range map[string]int{"a": 0, "b": 0, "c": 0, "d": 1, "e": 1} {
		l.submitted(id, phase)
	}
	l.batch(&events.Batch{Items: []events.WorkRequest{{ID: "a"}, {ID: "b"}}})
	l.batch(&events.Batch{Items: []events.WorkRequest{{ID: "c"}, {ID: "d"}}})
	l.batch(&events.Batch{Items: []events.WorkRequest{{ID: "e"}}})

	results := []struct {
		id                string
		started, finished time.Time
		wantFirst         bool
	}{
		{"b", at(10), at(30), true},
		{"a", at(0), at(10), true},
		{"a", at(50), at(60), false}, // a second result of a
		{"c", at(40), at(45), true},
		{"d", at(45), at(90), true},
		{"x", at(0), at(1), false}, // not submitted
	}
	for _, r := range results {
		got := l.result(&events.Result{ID: r.id, Started: r.started, Finished: r.finished})
		if got != r.wantFirst {
			t.Errorf("result(%s) = %v, want %v", r.id, got, r.wantFirst)
		}
	}

	spans, finished := l.spans()
	want := []batchSpan{
		{first: at(0), last: at(30), size: 2, phase: 0},
		{first: at(40), last: at(90), size: 2, phase: -1},
	}
	if len(spans) != len(want) {
		t.Fatalf("spans = %+v, want %+v (e has no result)", spans, want)
	}
	for i := range want {
		if spans[i] != want[i] {
			t.Errorf("span %d = %+v, want %+v", i, spans[i], want[i])
		}
	}
	if len(finished) != 4 {
		t.Errorf("finished = %d times, want 4", len(finished))
	}
}

// TestFigures checks the p95 over the run, the steady half of each phase
// and the rates on hand-made batches: two phases of 1 s from t0.
func TestFigures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	batch := func(from, ms, size, phase int) batchSpan {
		return batchSpan{first: at(from), last: at(from + ms), size: size, phase: phase}
	}
	spans := []batchSpan{
		batch(100, 10, 2, 0),  // phase 1, first half: not steady
		batch(600, 20, 4, 0),  // phase 1, steady
		batch(900, 30, 2, -1), // mixed: not steady
		batch(1200, 50, 4, 1), // phase 2, first half
		batch(1500, 40, 6, 1), // phase 2, steady
		batch(1700, 60, 2, 1), // phase 2, steady
		batch(2100, 99, 9, 1), // after the run
	}
	finished := []time.Time{at(10), at(600), at(1100), at(1400), at(1999), at(2000)}

	run := figures(spans, finished, t0, time.Second, 2, 45*time.Millisecond)
	if got, want := run.Batches, 6; got != want {
		t.Errorf("batches = %d, want %d", got, want)
	}
	if got, want := run.Over, 2; got != want {
		t.Errorf("over = %d, want %d (50 and 60 ms)", got, want)
	}
	if got, want := run.P95, 60*time.Millisecond; got != want {
		t.Errorf("p95 = %s, want %s", got, want)
	}
	if got, want := run.PerSecond, 2.5; got != want {
		t.Errorf("items/s = %v, want %v (5 finished within 2 s)", got, want)
	}

	want := []PhaseFigures{
		{SteadyP95: 20 * time.Millisecond, MeanSize: 4, PerSecond: 2},
		{SteadyP95: 60 * time.Millisecond, MeanSize: 4, PerSecond: 3},
	}
	for i := range want {
		if got := run.Phases[i]; got != want[i] {
			t.Errorf("phase %d = %+v, want %+v", i+1, got, want[i])
		}
	}
}

func TestAdaptiveVerdict(t *testing.T) {
	ms := time.Millisecond
	res := AdaptiveResult{
		Config: AdaptiveConfig{}.withDefaults(),
		Fixed: []AdaptiveRun{
			{Size: 8, P95: 40 * ms, PerSecond: 400},
			{Size: 32, P95: 115 * ms, PerSecond: 500},
			{Size: 64, P95: 250 * ms, PerSecond: 600},
		},
		Adaptive: AdaptiveRun{P95: 110 * ms, PerSecond: 480},
	}
	v := res.Verdict()
	if v.Best.Size != 32 || v.Unbounded.Size != 64 {
		t.Errorf("best %d, unbounded %d: want 32 and 64", v.Best.Size, v.Unbounded.Size)
	}
	if v.VsBest != 0.96 || v.VsUnbounded != 0.8 || v.P95Ratio != 1.1 {
		t.Errorf("vs best %v, vs unbounded %v, p95 ratio %v: want 0.96, 0.8, 1.1",
			v.VsBest, v.VsUnbounded, v.P95Ratio)
	}
	if !v.P95Met() || !v.ThroughputMet() {
		t.Errorf("p95 met %v, throughput met %v: want both", v.P95Met(), v.ThroughputMet())
	}

	var out bytes.Buffer
	if err := PrintAdaptive(&out, res); err != nil {
		t.Fatalf("PrintAdaptive: %v", err)
	}
	for _, want := range []string{"fixed 32", "adaptive", "best fixed size with p95", "met"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed:\n%s\nwant it to hold %q", out.String(), want)
		}
	}
}

// BenchmarkAdaptivePipeline runs the full sweep of Adaptive, its default
// scenario through the real services, and reports the adaptive run
// against the fixed sizes. One run takes about 4 minutes; run it with
//
//	go test -run '^$' -bench BenchmarkAdaptivePipeline -benchtime 1x -v \
//		-timeout 20m ./internal/bench/
//
// Metrics: p95/target and p95_ms of the adaptive run over the whole run;
// items/s; frac_of_best_fixed, its throughput over the best fixed size
// whose p95 stays within 20% of the target (best_fixed_size), and
// frac_of_unbounded_fixed, over the best fixed size regardless of
// latency; count_phaseN, the controller's count at the end of each phase.
// The table of every run is logged (in full with -v).
func BenchmarkAdaptivePipeline(b *testing.B) {
	var res AdaptiveResult
	for b.Loop() {
		var err error
		if res, err = Adaptive(b.Context(), AdaptiveConfig{StoreDir: b.TempDir()}); err != nil {
			b.Fatalf("Adaptive: %v", err)
		}
	}

	v := res.Verdict()
	b.ReportMetric(v.P95Ratio, "p95/target")
	b.ReportMetric(float64(res.Adaptive.P95)/1e6, "p95_ms")
	b.ReportMetric(res.Adaptive.PerSecond, "items/s")
	b.ReportMetric(v.VsBest, "frac_of_best_fixed")
	b.ReportMetric(float64(v.Best.Size), "best_fixed_size")
	b.ReportMetric(v.VsUnbounded, "frac_of_unbounded_fixed")
	for i, p := range res.Adaptive.Phases {
		b.ReportMetric(float64(p.Count), "count_phase"+strconv.Itoa(i+1))
	}
	var out bytes.Buffer
	_ = PrintAdaptive(&out, res)
	b.Log("\n" + out.String())
}
