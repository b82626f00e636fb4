package batcher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// within reports whether got is within frac of want.
func within(got, want time.Duration, frac float64) bool {
	d := float64(got - want)
	return d <= frac*float64(want) && -d <= frac*float64(want)
}

func TestControllerConverges(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name  string
		sim   sim
		cfg   AdaptiveConfig
		start int
		// wantCount, when set, is the count at the end of every phase;
		// otherwise each phase's steady p95 must be within 20% of the
		// target.
		wantCount int
	}{
		{"cost rises", sim{workers: 4, overhead: 20 * ms, costs: []time.Duration{ms, 3 * ms}},
			AdaptiveConfig{TargetP95: 100 * ms, MaxCount: 256}, 32, 0},
		{"cost falls", sim{workers: 4, overhead: 20 * ms, costs: []time.Duration{3 * ms, ms}},
			AdaptiveConfig{TargetP95: 100 * ms, MaxCount: 256}, 32, 0},
		{"one worker, from one item", sim{workers: 1, overhead: 5 * ms,
			costs: []time.Duration{ms / 2}}, AdaptiveConfig{TargetP95: 50 * ms}, 1, 0},
		{"from far above", sim{workers: 2, overhead: 10 * ms, costs: []time.Duration{2 * ms}},
			AdaptiveConfig{TargetP95: 200 * ms}, 500, 0},
		{"target out of reach", sim{workers: 2, overhead: 150 * ms,
			costs: []time.Duration{ms}}, AdaptiveConfig{TargetP95: 100 * ms, MinCount: 2}, 32, 2},
		{"max count binds", sim{workers: 2, overhead: ms, costs: []time.Duration{ms / 10}},
			AdaptiveConfig{TargetP95: 100 * ms, MaxCount: 64}, 8, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.sim
			s.phase, s.jitter, s.seed = time.Minute, 0.2, 7
			res, _ := s.adaptive(tt.cfg, tt.start)

			for i, p95 := range res.steadyP95 {
				if tt.wantCount != 0 {
					if got := res.counts[i]; got != tt.wantCount {
						t.Errorf("phase %d: count = %d, want %d", i+1, got, tt.wantCount)
					}
					continue
				}
				if !within(p95, tt.cfg.TargetP95, 0.2) {
					t.Errorf("phase %d: steady p95 = %s, want within 20%% of %s (count %d)",
						i+1, p95, tt.cfg.TargetP95, res.counts[i])
				}
			}
		})
	}
}

// TestAdaptiveAgainstSweep checks the figures BenchmarkAdaptive reports
// against the goals of issue 4; they are virtual-time, hence exact.
func TestAdaptiveAgainstSweep(t *testing.T) {
	s := benchSim()
	cfg := AdaptiveConfig{TargetP95: benchTarget, MaxCount: 256}
	best, _ := s.sweep(cfg.MaxCount, benchTarget*12/10)
	res, _ := s.adaptive(cfg, DefaultMaxCount)

	if !within(res.p95, benchTarget, 0.2) {
		t.Errorf("adaptive p95 = %s, want within 20%% of %s", res.p95, benchTarget)
	}
	if frac := res.throughput / best.throughput; frac < 0.9 {
		t.Errorf("adaptive throughput = %.0f items/s, %.2f of fixed size %d (%.0f), want >= 0.90",
			res.throughput, frac, best.size, best.throughput)
	}
}

func TestControllerSteps(t *testing.T) {
	target := 100 * time.Millisecond
	tests := []struct {
		name    string
		latency time.Duration
		items   int // per batch, of a limit of 40
		want    int
	}{
		{"far above halves", 400 * time.Millisecond, 40, 20},
		{"above shrinks in proportion", 125 * time.Millisecond, 40, 32},
		{"within the dead band holds", 103 * time.Millisecond, 40, 40},
		{"below grows", 80 * time.Millisecond, 40, 45},
		{"far below grows by a quarter at most", 10 * time.Millisecond, 40, 50},
		{"below but not full holds", 10 * time.Millisecond, 10, 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctrl := NewController(AdaptiveConfig{TargetP95: target, Window: 4}, fixed(40), nil)
			for range 4 {
				ctrl.Observe("k", Sample{Limit: 40, Items: tt.items, Latency: tt.latency})
			}
			if got := ctrl.Count("k"); got != tt.want {
				t.Errorf("count = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestControllerShrinksEarly feeds a window of 20 batches some slow ones:
// the count is cut as soon as the window's p95 is bound to be over the
// target (the second slow batch), by the smaller of the two, and not
// before.
func TestControllerShrinksEarly(t *testing.T) {
	target := 100 * time.Millisecond
	tests := []struct {
		name      string
		latencies []time.Duration
		want      int
	}{
		{"one slow batch holds", []time.Duration{90, 300, 90, 90}, 40},
		{"two slow batches cut by the smaller", []time.Duration{90, 400, 90, 200}, 20},
		{"slow within the dead band holds", []time.Duration{104, 104, 104, 104}, 40},
		{"first two slow", []time.Duration{125, 130}, 32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctrl := NewController(AdaptiveConfig{TargetP95: target, Window: 20}, fixed(40), nil)
			for _, ms := range tt.latencies {
				ctrl.Observe("k", Sample{Limit: 40, Items: 40, Latency: ms * time.Millisecond})
			}
			if got := ctrl.Count("k"); got != tt.want {
				t.Errorf("count = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestOverAllowed(t *testing.T) {
	for _, tt := range []struct{ n, want int }{{1, 0}, {4, 0}, {10, 0}, {20, 1}, {40, 2},
		{100, 5}} {
		if got := overAllowed(tt.n); got != tt.want {
			t.Errorf("overAllowed(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}

func TestControllerDropsStaleSamples(t *testing.T) {
	ctrl := NewController(AdaptiveConfig{Window: 1}, fixed(40), nil)
	ctrl.Observe("k", Sample{Limit: 39, Items: 39, Latency: time.Second})
	if got := ctrl.Count("k"); got != 40 {
		t.Errorf("count after a sample of another limit = %d, want 40", got)
	}
	if got := ctrl.Limits("k"); got.MaxBytes != 0 || got.Linger != 0 {
		t.Errorf("limits = %+v, want the base policy's bytes and linger", got)
	}
}

// pending returns a batch of kind k holding the given request IDs.
func pending(limit int, ids ...string) *Pending {
	p := &Pending{Kind: "k", Limits: Limits{MaxCount: limit}}
	for _, id := range ids {
		p.Items = append(p.Items, Item{Req: &events.WorkRequest{ID: id, Kind: "k"}})
	}
	return p
}

func TestFeedbackObservesCompleteBatches(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	ctrl := NewController(AdaptiveConfig{Window: 1}, fixed(3), nil)
	fb := newFeedback(ctrl)

	fb.track(pending(3, "a", "b", "c"))
	cancelled := fb.track(pending(3, "x"))
	fb.cancel(cancelled)

	results := []*events.Result{
		{ID: "b", Started: at(10), Finished: at(50)},
		{ID: "a", Started: at(5), Finished: at(20)},
		{ID: "x", Started: at(0), Finished: at(1)},
		{ID: "c", Finished: at(80)}, // dead: no start
		{ID: "a", Started: at(5), Finished: at(20)},
	}
	wantKnown := []bool{true, true, false, true, false}
	for i, res := range results {
		if known := fb.result(res); known != wantKnown[i] {
			t.Errorf("result %d (%s): known = %v, want %v", i, res.ID, known, wantKnown[i])
		}
	}

	// A window of one at 75 ms against 100 ms, full batch: the count grows.
	if c := ctrl.Count("k"); c != 4 {
		t.Errorf("count after one sample of 75 ms = %d, want 4", c)
	}
	if n := fb.pending(); n != 0 {
		t.Errorf("pending items = %d, want 0", n)
	}
	if len(fb.order) != 0 {
		t.Errorf("tracked batches = %d, want 0", len(fb.order))
	}
}

func TestFeedbackForgetsRebatchedItems(t *testing.T) {
	ctrl := NewController(AdaptiveConfig{Window: 1}, fixed(2), nil)
	fb := newFeedback(ctrl)
	fb.track(pending(2, "a", "b"))
	fb.track(pending(2, "b", "c")) // b came back after a failed ack

	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		fb.result(&events.Result{ID: id, Started: now, Finished: now.Add(300 * time.Millisecond)})
	}
	// Only the second batch completes: 300 ms against 100 ms halves 2.
	if c := ctrl.Count("k"); c != 1 {
		t.Errorf("count = %d, want 1", c)
	}
	if len(fb.order) > 1 {
		t.Errorf("tracked batches = %d, want at most the stuck first one", len(fb.order))
	}
}

// TestRunAdaptiveShrinksOnSlowResults runs the batcher in adaptive mode
// against a real server and answers its batches as a slow agent would:
// the controller halves the count.
func TestRunAdaptiveShrinksOnSlowResults(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	cfg := Config{
		Default:  Limits{MaxCount: 8, Linger: time.Second},
		Adaptive: &AdaptiveConfig{TargetP95: 10 * time.Millisecond, Window: 1},
	}
	svc, _ := start(t, conn, cfg)

	var ids []string
	for i := range 8 {
		id := fmt.Sprintf("slow-%d", i)
		publishReady(t, conn, "alpha", id)
		ids = append(ids, id)
	}
	got := readBatches(t, conn, len(ids))
	checkExactlyOnce(t, got, ids)

	testenv.WaitFor(t, 5*time.Second, "results feedback subscribed", func() bool {
		return svc.fb.pending() == len(ids)
	})
	now := time.Now()
	for _, id := range ids {
		res := &events.Result{
			ID: id, Kind: "alpha", Status: events.StatusOK,
			Started: now, Finished: now.Add(100 * time.Millisecond),
		}
		err := conn.Publish(context.Background(), events.ResultSubject("alpha"), res,
			events.ResultMsgID(&events.WorkRequest{ID: id}))
		if err != nil {
			t.Fatalf("publish result %s: %v", id, err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "count halved", func() bool {
		return svc.Controller().Count("alpha") == 4
	})
}
