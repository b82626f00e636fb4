package aggregator

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// t0 is a boundary of every bucket and window the unit tests use.
var t0 = time.Date(2026, 3, 4, 5, 6, 0, 0, time.UTC).UnixNano()

// at is t0 plus d.
func at(d time.Duration) int64 { return t0 + int64(d) }

const sec = time.Second

// unitConfig has 1 s buckets, final windows of 10 s and a 30 s view.
func unitConfig() Config {
	return Config{
		Resolution: sec, Windows: []time.Duration{10 * sec, 30 * sec},
		AllowedLateness: 2 * sec, MaxFuture: 2 * sec, IdleExpiry: time.Minute,
		MaxGroups: 100,
	}.withDefaults()
}

// harness drives a table with explicit times and keeps what it emits.
type harness struct {
	t      *testing.T
	tab    *table
	finals []events.Snapshot
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	return &harness{t: t, tab: newTable(cfg.withDefaults())}
}

// add records a duration of ms for (service, op) at event time t, stored
// by the stream at ts.
func (h *harness) add(op string, ms float64, t, ts int64) outcome {
	out, _ := h.tab.record(groupKey{"svc", op}, &sample{t: t, ts: ts, n: 1, ms: ms,
		status: events.TimingOK, timing: true})
	return out
}

// addOnTime records values at t, stored at t.
func (h *harness) addOnTime(op string, t int64, values ...float64) {
	h.t.Helper()
	for _, v := range values {
		if out := h.add(op, v, t, t); out != applied {
			h.t.Fatalf("add %s %v at +%s: outcome %d, want applied", op, v,
				time.Duration(t-t0), out)
		}
	}
}

// flush flushes with watermark and clock at now, returning the partials.
func (h *harness) flush(now int64) []events.Snapshot {
	return h.tab.flush(now, now, func(s events.Snapshot) { h.finals = append(h.finals, s) })
}

// final returns the final of op for the window ending at end.
func (h *harness) final(op string, end int64) events.Snapshot {
	h.t.Helper()
	var found []events.Snapshot
	for _, s := range h.finals {
		if s.Op == op && s.End.UnixNano() == end {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		h.t.Fatalf("%d finals of %s ending at +%s, want exactly 1", len(found), op,
			time.Duration(end-t0))
	}
	return found[0]
}

func partialOf(t *testing.T, snaps []events.Snapshot, op string) events.Snapshot {
	t.Helper()
	for _, s := range snaps {
		if s.Op == op {
			return s
		}
	}
	t.Fatalf("no partial snapshot of %s among %d", op, len(snaps))
	return events.Snapshot{}
}

// latency lists min, max, mean and the quantiles, nil when absent.
func latency(f events.Figures) []float64 {
	ps := []*float64{f.MinMs, f.MaxMs, f.MeanMs, f.P50Ms, f.P90Ms, f.P95Ms, f.P99Ms, f.P999Ms}
	if slices.Contains(ps, nil) {
		if slices.ContainsFunc(ps, func(p *float64) bool { return p != nil }) {
			return []float64{math.NaN()} // some present, some absent: never right
		}
		return nil
	}
	out := make([]float64, len(ps))
	for i, p := range ps {
		out[i] = *p
	}
	return out
}

func seq(lo, hi int) []float64 {
	var v []float64
	for i := lo; i <= hi; i++ {
		v = append(v, float64(i))
	}
	return v
}

func TestNearestRank(t *testing.T) {
	ones := slices.Repeat([]float64{1}, 99)
	tests := []struct {
		name    string
		buckets [][]float64 // values per 1 s bucket of one window
		count   int64
		want    []float64 // min, max, mean, p50, p90, p95, p99, p99.9
	}{
		{"1 to 100", [][]float64{seq(1, 30), seq(31, 100)}, 100,
			[]float64{1, 100, 50.5, 50, 90, 95, 99, 100}},
		{"99 of 1 ms and one of 10,000 s", [][]float64{ones, {10_000_000}}, 100,
			[]float64{1, 10_000_000, 100_000.99, 1, 1, 1, 1, 10_000_000}},
		{"{0,0,0} merged with {5}", [][]float64{{0, 0, 0}, {5}}, 4,
			[]float64{0, 5, 1.25, 0, 5, 5, 5, 5}},
		{"single sample", [][]float64{{7}}, 1, []float64{7, 7, 7, 7, 7, 7, 7, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, unitConfig())
			for i, b := range tt.buckets {
				h.addOnTime("op", at(time.Duration(i)*sec), b...)
			}
			partial := partialOf(t, h.flush(at(5*sec)), "op")
			h.flush(at(12 * sec))
			final := h.final("op", at(10*sec))

			for name, f := range map[string]events.Figures{
				"partial": partial.Figures, "final": final.Figures,
				"30s rollup": final.Rollups[0],
			} {
				if f.Count != tt.count {
					t.Errorf("%s count = %d, want %d", name, f.Count, tt.count)
				}
				if diff := gocmp.Diff(tt.want, latency(f), approx()); diff != "" {
					t.Errorf("%s min, max, mean, p50..p99.9 (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func approx() gocmp.Option {
	return gocmp.Comparer(func(a, b float64) bool {
		return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(a))
	})
}

func TestLatenessAndFuture(t *testing.T) {
	// The window [0, 10s) is final at 12 s; samples may lie 2 s ahead.
	tests := []struct {
		name    string
		t, ts   time.Duration
		flushed time.Duration // a flush before the sample, 0 for none
		want    outcome
	}{
		{"on time", 5 * sec, 5 * sec, 0, applied},
		{"late but within lateness", 9 * sec, 12*sec - 1, 0, applied},
		{"stored at end plus lateness", 9 * sec, 12 * sec, 0, late},
		{"window already final", 9 * sec, 11 * sec, 13 * sec, late},
		{"max future", 7 * sec, 5 * sec, 0, applied},
		{"past max future", 7*sec + 1, 5 * sec, 0, future},
		{"year 9999", 1 << 62, 5 * sec, 0, future},
		{"long ago", -1 << 62, 5 * sec, 0, late},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, unitConfig())
			if tt.flushed != 0 {
				h.addOnTime("other", at(sec), 1)
				h.flush(at(tt.flushed))
			}
			if got := h.add("op", 3, at(tt.t), at(tt.ts)); got != tt.want {
				t.Fatalf("outcome = %d, want %d", got, tt.want)
			}

			snap := partialOf(t, h.flush(at(14*sec)), "op")
			var wantLate, wantFuture int64
			switch tt.want {
			case late:
				wantLate = 1
			case future:
				wantFuture = 1
			}
			if snap.Late != wantLate || snap.Future != wantFuture ||
				snap.Dropped != wantLate+wantFuture {
				t.Errorf("late %d future %d dropped %d, want %d, %d, %d", snap.Late,
					snap.Future, snap.Dropped, wantLate, wantFuture, wantLate+wantFuture)
			}
		})
	}
}

func TestFinalOnceAndEmptyWindows(t *testing.T) {
	h := newHarness(t, unitConfig())
	h.addOnTime("op", at(sec), 4, 6)
	h.addOnTime("op", at(25*sec), 9)

	// Flush often, with windows closing in between: each closes once.
	for now := at(0); now <= at(45*sec); now += int64(500 * time.Millisecond) {
		h.flush(now)
	}
	if len(h.finals) != 4 {
		t.Fatalf("%d finals, want 4 (windows ending at 10, 20, 30 and 40 s)", len(h.finals))
	}
	tests := []struct {
		end   time.Duration
		count int64
		lat   []float64
	}{
		{10 * sec, 2, []float64{4, 6, 5, 4, 6, 6, 6, 6}},
		{20 * sec, 0, nil},
		{30 * sec, 1, []float64{9, 9, 9, 9, 9, 9, 9, 9}},
		{40 * sec, 0, nil},
	}
	for _, tt := range tests {
		f := h.final("op", at(tt.end))
		if f.Partial || f.Count != tt.count || f.Window.Std() != 10*sec ||
			f.Start.UnixNano() != at(tt.end-10*sec) {
			t.Errorf("final at +%s: partial %v count %d window %s start %s, want false, %d, "+
				"10s, +%s", tt.end, f.Partial, f.Count, f.Window, f.Start, tt.count, tt.end-10*sec)
		}
		if diff := gocmp.Diff(tt.lat, latency(f.Figures)); diff != "" {
			t.Errorf("final at +%s latency (-want +got):\n%s", tt.end, diff)
		}
	}

	// The 30 s rollup of the last final holds the windows from 10 to 40 s.
	r := h.final("op", at(40*sec)).Rollups
	if len(r) != 1 || r[0].Count != 1 || r[0].Start.UnixNano() != at(10*sec) ||
		*r[0].P50Ms != 9 {
		t.Errorf("rollups = %+v, want one 30 s view from +10s counting the 9 ms sample", r)
	}
}

func TestPartialRolls(t *testing.T) {
	h := newHarness(t, unitConfig())
	for i := range 20 {
		h.addOnTime("op", at(time.Duration(i)*sec), float64(i))
	}

	// At 14.5 s the rolling view holds the buckets from 5 to 14 s.
	got := partialOf(t, h.flush(at(14*sec+500*time.Millisecond)), "op")
	if !got.Partial || got.Count != 10 || *got.MinMs != 5 || *got.MaxMs != 14 {
		t.Errorf("partial %v count %d min %v max %v, want true, 10, 5, 14",
			got.Partial, got.Count, *got.MinMs, *got.MaxMs)
	}
	if got.Start.UnixNano() != at(5*sec) || got.End.UnixNano() != at(15*sec) {
		t.Errorf("partial from +%s to +%s, want +5s to +15s",
			time.Duration(got.Start.UnixNano()-t0), time.Duration(got.End.UnixNano()-t0))
	}
	// 10 samples over the 9.5 s from the view's start to now.
	if want := 10 / 9.5; math.Abs(got.Rate-want) > 1e-9 {
		t.Errorf("rate = %v, want %v", got.Rate, want)
	}
	// The final rollup of [0, 10s) is there, the view counts since +0.
	if len(got.Rollups) != 1 || got.Rollups[0].Count != 10 {
		t.Errorf("rollups = %+v, want the 30 s view counting 10", got.Rollups)
	}
}

// TestExactWhileSmall checks that a window of at most 1,000 samples gives
// exact quantiles even when the windows around it are large.
func TestExactWhileSmall(t *testing.T) {
	h := newHarness(t, unitConfig())
	small := make([]float64, 999)
	for i := range small {
		small[i] = 1 + float64(i)/1000 // steps finer than the sketch's 1%
	}
	h.addOnTime("op", at(0), small[:500]...)
	h.addOnTime("op", at(5*sec), small[500:]...)
	for i := range 30 {
		h.flush(at(time.Duration(i) * sec)) // compactions along the way
		h.addOnTime("op", at(time.Duration(10+i)*sec), seq(1, 200)...)
	}
	h.flush(at(45 * sec))

	f := h.final("op", at(10*sec))
	if f.Count != 999 {
		t.Fatalf("count = %d, want 999", f.Count)
	}
	for _, q := range []struct {
		name string
		got  *float64
		q    float64
	}{{"p50", f.P50Ms, 0.5}, {"p90", f.P90Ms, 0.9}, {"p99", f.P99Ms, 0.99}} {
		want := small[int(math.Ceil(q.q*999))-1]
		if *q.got != want {
			t.Errorf("%s = %v, want exactly %v", q.name, *q.got, want)
		}
	}
	if r := h.final("op", at(30*sec)).Rollups[0]; r.Count != 999+2*2000 {
		t.Errorf("30 s view count = %d, want %d", r.Count, 999+2*2000)
	}
}

// TestViewsMatchSinglePass compares the merged views with one summary of
// the same samples, beyond the exact limit.
func TestViewsMatchSinglePass(t *testing.T) {
	h := newHarness(t, unitConfig())
	vals := lognormal(7, 9000)
	var single quantile.Summary
	for i, v := range vals {
		h.addOnTime("op", at(time.Duration(i%30)*sec), v)
		_ = single.Add(v)
	}
	for now := at(0); now <= at(35*sec); now += int64(sec) {
		h.flush(now)
	}
	view := h.final("op", at(30*sec)).Rollups[0]
	if view.Count != 9000 {
		t.Fatalf("view count = %d, want 9000", view.Count)
	}
	sorted := slices.Sorted(slices.Values(vals))
	for _, q := range []struct {
		got *float64
		q   float64
	}{{view.P50Ms, 0.5}, {view.P90Ms, 0.9}, {view.P99Ms, 0.99}, {view.P999Ms, 0.999}} {
		exact := sorted[int(math.Ceil(q.q*9000))-1]
		if rel := math.Abs(*q.got-exact) / exact; rel > quantile.RelativeAccuracy {
			t.Errorf("q%v = %v, exact %v: relative error %.4f", q.q, *q.got, exact, rel)
		}
		if one := single.Quantile(q.q); *q.got != one {
			t.Errorf("q%v merged = %v, single pass %v", q.q, *q.got, one)
		}
	}
}

func TestCapAndOverflow(t *testing.T) {
	cfg := unitConfig()
	cfg.MaxGroups = 5
	h := newHarness(t, cfg)
	for i := range 10 {
		h.addOnTime(fmt.Sprintf("op%d", i), at(sec), float64(i+1))
	}
	snaps := h.flush(at(2 * sec))
	if h.tab.len() != 5 || len(snaps) != 5 {
		t.Fatalf("groups = %d, snapshots %d, want 5 and 5", h.tab.len(), len(snaps))
	}
	over := partialOf(t, snaps, Overflow)
	if over.Service != Overflow || over.Count != 6 || *over.MinMs != 5 || *over.MaxMs != 10 {
		t.Errorf("overflow count %d min %v max %v, want 6, 5, 10 (op4 to op9)",
			over.Count, *over.MinMs, *over.MaxMs)
	}
	// A real group keeps its own samples.
	if got := partialOf(t, snaps, "op2"); got.Count != 1 || *got.MaxMs != 3 {
		t.Errorf("op2 count %d max %v, want 1, 3", got.Count, *got.MaxMs)
	}
}

func TestIdleExpiry(t *testing.T) {
	h := newHarness(t, unitConfig())
	h.addOnTime("op", at(sec), 1)
	h.flush(at(30 * sec))
	if h.tab.len() != 1 {
		t.Fatalf("groups while active = %d, want 1", h.tab.len())
	}
	h.flush(at(75 * sec))
	if h.tab.len() != 0 {
		t.Errorf("groups after the idle expiry = %d, want 0", h.tab.len())
	}
	// One final per window up to the expiry, the empty ones included.
	if len(h.finals) != 7 {
		t.Errorf("%d finals, want 7 (windows ending at 10 to 70 s)", len(h.finals))
	}
}

func TestPartitionFilter(t *testing.T) {
	cfg := unitConfig()
	cfg.Partitions = 2
	tabs := [2]*harness{}
	for p := range tabs {
		cfg.Partition = p
		tabs[p] = newHarness(t, cfg)
	}
	for i := range 50 {
		op := fmt.Sprintf("op%d", i)
		for p, h := range tabs {
			out := h.add(op, 1, at(sec), at(sec))
			if owns := PartitionOf("svc", op, 2) == p; owns != (out == applied) {
				t.Errorf("%s on partition %d: outcome %d, owns %v", op, p, out, owns)
			}
		}
	}
	a, b := tabs[0].tab.len(), tabs[1].tab.len()
	if a+b != 50 || a == 0 || b == 0 {
		t.Errorf("groups per partition = %d and %d, want 50 split between both", a, b)
	}
}

func TestResources(t *testing.T) {
	h := newHarness(t, unitConfig())
	reading := func(service string, pid int32, cpu float64, rss uint64, d time.Duration) {
		ev := &events.Resource{Host: "h1", Service: service, PID: pid, CPUPercent: cpu,
			RSSBytes: rss, HostCPUPercent: 40, HostMemUsedPerc: 50, Time: time.Unix(0, at(d))}
		s := sample{t: at(d), ts: at(d), n: 1, res: ev}
		h.tab.record(groupKey{service, resourceOp}, &s)
		if service != hostsService {
			h.tab.record(groupKey{hostsService, resourceOp}, &s)
		}
	}
	reading("agent", 1, 10, 100, 0)
	reading("agent", 2, 20, 200, sec)
	reading("agent", 1, 15, 150, 2*sec)
	reading("batcher", 3, 5, 50, sec)
	snaps := h.flush(at(5 * sec))

	tests := []struct {
		service string
		count   int64
		want    events.ResourceFigures
	}{
		{"agent", 3, events.ResourceFigures{CPUPercent: 35, RSSBytes: 350,
			HostCPUPercent: 40, HostMemUsedPerc: 50, Processes: 2}},
		{"host", 4, events.ResourceFigures{CPUPercent: 40, RSSBytes: 400,
			HostCPUPercent: 40, HostMemUsedPerc: 50, Processes: 3}},
	}
	for _, tt := range tests {
		var got events.Snapshot
		for _, s := range snaps {
			if s.Service == tt.service {
				got = s
			}
		}
		if got.Count != tt.count || latency(got.Figures) != nil || got.Cache != nil {
			t.Errorf("%s count %d latency %v cache %v, want %d and neither", tt.service,
				got.Count, latency(got.Figures), got.Cache, tt.count)
		}
		if diff := gocmp.Diff(&tt.want, got.Resource); diff != "" {
			t.Errorf("%s resource figures (-want +got):\n%s", tt.service, diff)
		}
	}
}

func TestStatuses(t *testing.T) {
	h := newHarness(t, unitConfig())
	for _, st := range []string{statusHit, statusHit, statusMiss, events.TimingError} {
		h.tab.record(groupKey{"svc", "op"}, &sample{t: at(sec), ts: at(sec), n: 1, ms: 1,
			status: st, timing: true})
	}
	got := partialOf(t, h.flush(at(2*sec)), "op")
	if got.Errors != 1 || got.Count != 4 {
		t.Errorf("errors %d count %d, want 1 and 4", got.Errors, got.Count)
	}
	if diff := gocmp.Diff(&events.CacheFigures{Hits: 2, Misses: 1}, got.Cache); diff != "" {
		t.Errorf("cache figures (-want +got):\n%s", diff)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	h := newHarness(t, unitConfig())
	vals := lognormal(3, 5000)
	for i, v := range vals {
		h.addOnTime(fmt.Sprintf("op%d", i%3), at(time.Duration(i%25)*sec), v)
	}
	h.flush(at(22 * sec))

	restored := newHarness(t, unitConfig())
	restored.tab.restore(h.tab.capture())
	restored.tab.finalWM.Store(h.tab.finalWM.Load())
	h.finals = nil
	for _, x := range []*harness{h, restored} {
		x.addOnTime("op1", at(24*sec), 1, 2, 3)
	}
	want, got := h.flush(at(45*sec)), restored.flush(at(45*sec))
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("partials after restore (-original +restored):\n%s", diff)
	}
	byGroupAndEnd := func(a, b events.Snapshot) int {
		return cmp.Compare(a.Op+a.End.String(), b.Op+b.End.String())
	}
	slices.SortFunc(h.finals, byGroupAndEnd)
	slices.SortFunc(restored.finals, byGroupAndEnd)
	if diff := gocmp.Diff(h.finals, restored.finals); diff != "" || len(h.finals) == 0 {
		t.Errorf("%d finals; after restore (-original +restored):\n%s", len(h.finals), diff)
	}
}

// lognormal returns n durations in ms, median about 7 ms.
func lognormal(seed uint64, n int) []float64 {
	rng := newRand(seed)
	out := make([]float64, n)
	for i := range out {
		out[i] = math.Exp(rng.NormFloat64() + 2)
	}
	return out
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed+1)) }

// TestOverflowAfterLoweredCap covers a restart with a lower cap than the
// checkpoint's group count: new groups still land in the overflow group
// instead of vanishing.
func TestOverflowAfterLoweredCap(t *testing.T) {
	cfg := unitConfig()
	cfg.MaxGroups = 5
	h := newHarness(t, cfg)
	h.tab.groups.Store(int64(cfg.MaxGroups + 3)) // as restored from a larger cap

	h.addOnTime("new", at(sec), 7)
	snaps := h.flush(at(2 * sec))
	if over := partialOf(t, snaps, Overflow); over.Count != 1 || *over.MaxMs != 7 {
		t.Errorf("overflow count %d, want the new group's 1 sample", over.Count)
	}
}

func TestTimingFromSubject(t *testing.T) {
	tests := []struct {
		name    string
		ev      events.Timing
		subject string
		service string
		op      string
		wantErr bool
	}{
		{"body names the group", events.Timing{Service: "shop", Op: "charge"},
			"perf.timing.shop.charge", "shop", "charge", false},
		{"subject names the group", events.Timing{}, "perf.timing.shop.charge", "shop", "charge", false},
		{"dotted op", events.Timing{Service: "agent", Op: "http.cache"},
			"perf.timing.agent.http_cache", "agent", "http.cache", false},
		{"body and subject differ", events.Timing{Service: "other", Op: "thing"},
			"perf.timing.shop.charge", "", "", true},
		{"subject too short", events.Timing{}, "perf.timing.shop", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tt.ev
			err := fromSubject(&ev, tt.subject)
			if (err != nil) != tt.wantErr {
				t.Fatalf("fromSubject() = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && (ev.Service != tt.service || ev.Op != tt.op) {
				t.Errorf("group = %s.%s, want %s.%s", ev.Service, ev.Op, tt.service, tt.op)
			}
		})
	}
}
