package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/timing"
	"github.com/perfpipe/perfpipe/services/aggregator"
)

// IngestConfig shapes the end-to-end ingest run.
type IngestConfig struct {
	// Producers is how many recorders publish at once, each as its own
	// service. Zero means 2.
	Producers int
	// Ops is how many operations each producer times. Zero means 20.
	Ops int
	// Duration is how long the producers record. Zero means 5 s.
	Duration time.Duration
	// Settle bounds the wait for the aggregator to apply every sample
	// after the producers stop. Zero means 30 s.
	Settle time.Duration
}

func (c IngestConfig) withDefaults() IngestConfig {
	if c.Producers == 0 {
		c.Producers = 2
	}
	if c.Ops == 0 {
		c.Ops = 20
	}
	if c.Duration == 0 {
		c.Duration = 5 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 30 * time.Second
	}
	return c
}

// benchService prefixes the producers' service names.
const benchService = "bench"

// IngestResult is what one ingest run measured.
type IngestResult struct {
	// Recorded is how many samples the producers recorded.
	Recorded int64
	// Applied is how many of them the aggregator's snapshots count.
	Applied int64
	// Seconds runs from the first sample to the last one applied.
	Seconds float64
	// PerSecond is Applied / Seconds: samples through the whole pipeline.
	PerSecond float64
	// Batches is how many timing batches the producers published.
	Batches int64
}

// Ingest runs producers that time lognormal work with pkg/timing as fast
// as they can, and an aggregator on the same server, and measures samples
// per second from the first record to the last sample the aggregator
// applied. The server should hold no other telemetry.
func Ingest(ctx context.Context, url string, cfg IngestConfig) (IngestResult, error) {
	cfg = cfg.withDefaults()
	log := slog.New(slog.DiscardHandler)
	conn, err := bus.Connect(ctx, url, "perfpipe-bench", log)
	if err != nil {
		return IngestResult{}, err
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx); err != nil {
		return IngestResult{}, err
	}

	agg, err := aggregator.New(conn, nil, aggregator.Config{Durable: "bench"}, log)
	if err != nil {
		return IngestResult{}, err
	}
	aggCtx, stopAgg := context.WithCancel(ctx)
	aggDone := make(chan error, 1)
	go func() { aggDone <- agg.Run(aggCtx) }()
	defer func() { stopAgg(); <-aggDone }()

	start := time.Now()
	recorded, batches, err := produce(ctx, conn, cfg, log)
	if err != nil {
		return IngestResult{}, err
	}

	// The aggregator also applies its own timings, so wait for at least
	// what the producers recorded, then check the bench groups' totals.
	deadline := time.Now().Add(cfg.Settle)
	for agg.Stats().Applied < recorded && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	res := IngestResult{Recorded: recorded, Seconds: secs, Batches: batches}
	for res.Applied = benchTotal(agg); res.Applied != recorded; res.Applied = benchTotal(agg) {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("bench: snapshots count %d of %d samples", res.Applied, recorded)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.PerSecond = float64(res.Applied) / secs
	return res, nil
}

// benchTotal sums the since-start totals of the producers' groups.
func benchTotal(agg *aggregator.Service) int64 {
	var n int64
	for _, s := range agg.Snapshots("") {
		if strings.HasPrefix(s.Service, benchService) {
			n += s.Total
		}
	}
	return n
}

// produce runs the producers for cfg.Duration and flushes them.
func produce(ctx context.Context, conn *bus.Conn, cfg IngestConfig,
	log *slog.Logger) (recorded, batches int64, err error) {
	var (
		wg    sync.WaitGroup
		total atomic.Int64
		pubs  atomic.Int64
		errs  = make(chan error, cfg.Producers)
	)
	for p := range cfg.Producers {
		rec, err := timing.New(conn.JS, benchService+strconv.Itoa(p), timing.Options{Logger: log})
		if err != nil {
			return 0, 0, err
		}
		wg.Go(func() {
			n, err := runProducer(ctx, rec, cfg, uint64(p))
			total.Add(n)
			pubs.Add(rec.Stats().Published)
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return total.Load(), pubs.Load(), <-errs
}

// runProducer records as fast as it can until cfg.Duration has passed,
// then flushes what is left.
func runProducer(ctx context.Context, rec *timing.Recorder, cfg IngestConfig,
	seed uint64) (int64, error) {
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rec.Run(runCtx) }()

	r := rand.New(rand.NewPCG(seed, seed+7))
	ops := make([]string, cfg.Ops)
	for i := range ops {
		ops[i] = "op" + strconv.Itoa(i)
	}
	var n int64
	end := time.Now().Add(cfg.Duration)
	for ; ; n++ {
		if n%4096 == 0 && time.Now().After(end) {
			break
		}
		ms := 10 * math.Exp(r.NormFloat64())
		rec.Observe(ops[n%int64(len(ops))], "ok", ms)
	}
	stop()
	return n, <-done
}
