package bench

import (
	"context"
	"testing"
	"time"
)

// TestPipelineRunsEveryItemOnce runs the work-path bench with few items:
// every item of every run gets exactly one ok result, and each figure is
// positive.
func TestPipelineRunsEveryItemOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := Pipeline(ctx, PipelineConfig{
		Items: 300, LatencyFor: 300 * time.Millisecond, Settle: 30 * time.Second,
		StoreDir: t.TempDir(),
	})
	if err != nil {
		t.Fatalf("Pipeline: %v (result %+v)", err, res)
	}

	runs := []struct {
		name      string
		got       Throughput
		wantCount int
	}{
		{"batched", res.Batched, 32},
		{"unbatched", res.Unbatched, 1},
		{"half rate", res.Latency, 32},
	}
	for _, r := range runs {
		if r.got.Items < 1 || r.got.OK != r.got.Items || r.got.Extra != 0 || r.got.NotOK != 0 {
			t.Errorf("%s: %+v, want every item with exactly one ok result", r.name, r.got)
		}
		if r.got.PerSecond <= 0 || r.got.BatchCount != r.wantCount {
			t.Errorf("%s: %+v, want a positive rate and batch count %d",
				r.name, r.got, r.wantCount)
		}
	}
	if res.Batched.Items != 300 || res.TargetRate <= 0 {
		t.Errorf("batched items %d, target rate %v: want 300 and positive",
			res.Batched.Items, res.TargetRate)
	}

	if got, want := len(res.Stages), len(stageNames); got != want {
		t.Fatalf("stages = %d, want %d", got, want)
	}
	for _, s := range res.Stages {
		if s.P50 < 0 || s.P99 < s.P50 {
			t.Errorf("stage %s: p50 %s, p99 %s: want 0 <= p50 <= p99", s.Stage, s.P50, s.P99)
		}
	}
	if e2e := res.Stages[len(res.Stages)-1]; e2e.P50 <= 0 {
		t.Errorf("end to end p50 = %s, want positive", e2e.P50)
	}
}
