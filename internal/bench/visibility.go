package bench

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
	"github.com/perfpipe/perfpipe/services/aggregator"
)

// VisibilityResult is how long a recorded sample takes to show in a
// published snapshot, with the default flush and publish intervals.
type VisibilityResult struct {
	Runs          int
	P50, P99, Max time.Duration
}

// Visibility records one sample of a fresh op, runs times, and measures
// from each Record call to the first snapshot on NATS that counts it.
func Visibility(ctx context.Context, url string, runs int) (VisibilityResult, error) {
	log := slog.New(slog.DiscardHandler)
	conn, err := bus.Connect(ctx, url, "perfpipe-bench-visibility", log)
	if err != nil {
		return VisibilityResult{}, err
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx); err != nil {
		return VisibilityResult{}, err
	}
	agg, err := aggregator.New(conn, nil, aggregator.Config{Durable: "bench-visibility"}, log)
	if err != nil {
		return VisibilityResult{}, err
	}
	rec, err := timing.New(conn.JS, "visibility", timing.Options{Logger: log})
	if err != nil {
		return VisibilityResult{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go agg.Run(runCtx)
	go rec.Run(runCtx)

	var lat quantile.Summary
	for i := range runs {
		d, err := visibleAfter(ctx, conn.NC, rec, "op"+strconv.Itoa(i))
		if err != nil {
			return VisibilityResult{}, err
		}
		_ = lat.Add(float64(d))
	}
	return VisibilityResult{Runs: runs, P50: time.Duration(lat.Quantile(0.5)),
		P99: time.Duration(lat.Quantile(0.99)), Max: time.Duration(lat.Max())}, nil
}

// visibleAfter records one sample of op and waits for a snapshot of it.
func visibleAfter(ctx context.Context, nc *nats.Conn, rec *timing.Recorder,
	op string) (time.Duration, error) {
	seen := make(chan struct{}, 1)
	sub, err := nc.Subscribe(events.SnapshotSubject("visibility", op), func(m *nats.Msg) {
		var s events.Snapshot
		if events.Unmarshal(m.Data, &s) == nil && s.Count > 0 {
			select {
			case seen <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return 0, err
	}
	defer sub.Unsubscribe()

	start := time.Now()
	rec.Record(op, events.TimingOK, time.Millisecond)
	select {
	case <-seen:
		return time.Since(start), nil
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("bench: no snapshot of visibility.%s within 10s", op)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
