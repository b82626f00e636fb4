package bench

import (
	"context"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
)

// TestIngestCountsEverySample runs a short ingest: every sample the
// producers recorded is counted by the aggregator's snapshots.
func TestIngestCountsEverySample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Ingest(ctx, testenv.NATS(t), IngestConfig{
		Producers: 2, Ops: 5, Duration: 300 * time.Millisecond, Settle: 20 * time.Second,
	})
	if err != nil {
		t.Fatalf("Ingest: %v (result %+v)", err, res)
	}
	if res.Recorded == 0 || res.Applied != res.Recorded || res.Batches == 0 {
		t.Errorf("result = %+v, want every recorded sample applied", res)
	}
}
