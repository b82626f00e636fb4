package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/perfpipe/perfpipe/internal/broker"
	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

// LatenessConfig shapes the run of Lateness.
type LatenessConfig struct {
	// Items is how many delayed items are submitted. Zero means 10,000.
	Items int
	// MinDelay is the shortest delay. Zero means 1 s.
	MinDelay time.Duration
	// Spread is the width over which the delays are spread evenly, from
	// MinDelay to MinDelay+Spread. Zero means 4 s: delays of 1 to 5 s.
	// A burst ignores it.
	Spread time.Duration
	// Burst makes every item due at the same instant, MinDelay after
	// submitting began (a NotBefore time, as for work due at midnight),
	// instead of spreading the delays. MinDelay should then exceed the
	// time submitting takes, so that every item is pending at once.
	Burst bool
	// Settle bounds the wait for the last release after the last item
	// fell due. Zero means 1 min.
	Settle time.Duration
	// StoreDir is the folder that holds the run's fresh store. Empty means
	// the system's temporary folder.
	StoreDir string
}

func (c LatenessConfig) withDefaults() LatenessConfig {
	if c.Items == 0 {
		c.Items = 10_000
	}
	if c.MinDelay == 0 {
		c.MinDelay = time.Second
	}
	if c.Spread == 0 && !c.Burst {
		c.Spread = 4 * time.Second
	}
	if c.Burst {
		c.Spread = 0
	}
	if c.Settle == 0 {
		c.Settle = time.Minute
	}
	return c
}

// LatenessResult is what Lateness measured. Lateness is the request's
// Trace.Released minus its Due(): how late the scheduler released it.
type LatenessResult struct {
	// Items is how many items were submitted and released.
	Items int
	// P50, P99 and Max are the nearest-rank quantiles of the lateness.
	P50, P99, Max time.Duration
	// SeenP99 is the p99 of the lateness as a consumer of PERFPIPE_READY
	// sees it: when the release arrived there, minus Due().
	SeenP99 time.Duration
	// Early counts the items released before they were due; it must be 0.
	Early int
	// Extra counts releases beyond the first of an item.
	Extra int
	// Submit is how long submitting took, to the last ack: when it is
	// below MinDelay, every item was pending at once.
	Submit time.Duration
	// Span is the time from the first release to the last, and Rate the
	// items released per second over it. In a burst that is the release
	// path's throughput; with spread delays it follows the schedule.
	Span time.Duration
	Rate float64
}

// ErrEarly is returned by Lateness when an item was released before due.
var ErrEarly = errors.New("items released before due")

// latenessKind is the kind of the delayed items; no agent runs them.
const latenessKind = "sleep"

// Lateness measures how late delayed items are released: it submits
// Items requests with delays spread evenly over MinDelay to
// MinDelay+Spread (or, with Burst, all due MinDelay after the start), in
// a shuffled order and with mixed priorities, to a
// real scheduler on a fresh embedded server, and follows PERFPIPE_READY
// until each is released. The scheduler runs with MaxInFlight -1 (no
// credit limit): no agent returns results, and the figures are then the
// timers' and the release path's alone, not waits for credit. The result
// comes with ErrEarly when any item was released before it was due.
func Lateness(ctx context.Context, cfg LatenessConfig) (LatenessResult, error) {
	cfg = cfg.withDefaults()
	if cfg.Items < 1 || cfg.MinDelay < 0 || cfg.Spread < 0 {
		return LatenessResult{}, fmt.Errorf("bench lateness: items %d, min delay %s, "+
			"spread %s: want at least 1 item and no negative delay",
			cfg.Items, cfg.MinDelay, cfg.Spread)
	}
	dir, err := os.MkdirTemp(cfg.StoreDir, "perfpipe-bench-lateness-")
	if err != nil {
		return LatenessResult{}, err
	}
	defer os.RemoveAll(dir)
	srv, err := broker.Start(broker.Config{Port: -1, StoreDir: dir})
	if err != nil {
		return LatenessResult{}, err
	}
	defer srv.Shutdown()

	res, err := runLateness(ctx, srv.ClientURL(), cfg)
	if err != nil {
		return res, fmt.Errorf("bench lateness: %w", err)
	}
	return res, nil
}

// runLateness runs the scheduler against url, submits the items, waits for
// their releases and stops the scheduler.
func runLateness(ctx context.Context, url string, cfg LatenessConfig) (
	LatenessResult, error) {
	log := slog.New(slog.DiscardHandler)
	schedConn, err := bus.Connect(ctx, url, "perfpipe-scheduler", log)
	if err != nil {
		return LatenessResult{}, err
	}
	defer schedConn.Close()
	client, err := bus.Connect(ctx, url, "perfpipe-bench", log)
	if err != nil {
		return LatenessResult{}, err
	}
	defer client.Close()
	if err := client.EnsureStreams(ctx); err != nil {
		return LatenessResult{}, err
	}

	rel := newReleases(cfg.Items)
	follow, err := followReady(ctx, client, rel)
	if err != nil {
		return LatenessResult{}, err
	}
	defer follow.Stop()
	stop, failed, err := runScheduler(ctx, schedConn, log)
	if err != nil {
		return LatenessResult{}, err
	}

	submit, err := measureLateness(ctx, client, cfg, rel, failed)
	if stopErr := stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return LatenessResult{Items: cfg.Items, Submit: submit}, err
	}
	res := rel.result()
	res.Submit = submit
	return res, rel.check()
}

// runScheduler runs a scheduler without a credit limit on conn. stop
// cancels it and returns Run's error; failed is closed when Run returns.
func runScheduler(ctx context.Context, conn *bus.Conn, log *slog.Logger) (
	stop func() error, failed <-chan struct{}, err error) {
	sched, err := scheduler.New(conn, scheduler.Config{MaxInFlight: -1}, log)
	if err != nil {
		return nil, nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = sched.Run(runCtx)
	}()
	return func() error { cancel(); <-done; return runErr }, done, nil
}

// measureLateness submits the items and waits until each is released, the
// scheduler stops, or Settle has passed since the last one fell due. It
// returns how long submitting took.
func measureLateness(ctx context.Context, client *bus.Conn, cfg LatenessConfig,
	rel *releases, failed <-chan struct{}) (time.Duration, error) {
	start := time.Now()
	if err := submitDelayed(ctx, client, cfg); err != nil {
		return 0, err
	}
	submit := time.Since(start)

	wait := time.Until(start.Add(cfg.MinDelay + cfg.Spread + cfg.Settle))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-rel.done:
		return submit, nil
	case <-failed:
		return submit, errors.New("the scheduler stopped during the run")
	case <-ctx.Done():
		return submit, ctx.Err()
	case <-timer.C:
		return submit, fmt.Errorf("%d of %d items released within %s of the last due time",
			rel.count(), cfg.Items, cfg.Settle)
	}
}

// submitDelayed publishes the delayed items in a shuffled order with
// random priorities, without waiting for each ack, and returns when the
// stream has acked them all. Item i's delay is MinDelay plus i/Items of
// Spread; in a burst every item is due MinDelay after the call.
func submitDelayed(ctx context.Context, conn *bus.Conn, cfg LatenessConfig) error {
	rnd := rand.New(rand.NewPCG(1, 2))
	prefix := nuid.Next()
	burstAt := time.Now().Add(cfg.MinDelay)
	sub := newSubmitter(conn)
	for _, i := range rnd.Perm(cfg.Items) {
		req := &events.WorkRequest{ID: prefix + "-" + strconv.Itoa(i), Kind: latenessKind,
			Priority: rnd.IntN(events.MaxPriority + 1),
			Payload:  events.Payload(`{"ms":0}`)}
		if cfg.Burst {
			req.NotBefore = burstAt
		} else {
			step := cfg.Spread * time.Duration(i) / time.Duration(cfg.Items)
			req.Delay = events.Duration(cfg.MinDelay + step)
		}
		if err := sub.submit(ctx, req); err != nil {
			return err
		}
	}
	return sub.wait(ctx)
}

// followReady feeds every release stored on PERFPIPE_READY to rel.
func followReady(ctx context.Context, conn *bus.Conn, rel *releases) (
	jetstream.ConsumeContext, error) {
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamReady,
		jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.ReadyAll}})
	if err != nil {
		return nil, fmt.Errorf("follow releases: %w", err)
	}
	return cons.Consume(func(m jetstream.Msg) {
		at := time.Now()
		var r events.WorkRequest
		if events.Unmarshal(m.Data(), &r) == nil {
			rel.add(&r, at)
		}
	})
}

// releases collects the lateness of each item's first release.
type releases struct {
	mu    sync.Mutex
	want  int
	seen  map[string]bool
	late  []time.Duration // Released - Due
	at    []time.Duration // arrival on READY - Due
	first time.Time       // the earliest Released
	last  time.Time       // the latest Released
	early int
	extra int
	done  chan struct{}
}

func newReleases(want int) *releases {
	return &releases{want: want, seen: make(map[string]bool, want),
		late: make([]time.Duration, 0, want), at: make([]time.Duration, 0, want),
		done: make(chan struct{})}
}

// add records r, which arrived on READY at at.
func (rl *releases) add(r *events.WorkRequest, at time.Time) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.seen[r.ID] {
		rl.extra++
		return
	}
	rl.seen[r.ID] = true

	due := r.Due()
	late := r.Trace.Released.Sub(due)
	if late < 0 || at.Before(due) {
		rl.early++
	}
	rl.late = append(rl.late, late)
	rl.at = append(rl.at, at.Sub(due))
	if rl.first.IsZero() || r.Trace.Released.Before(rl.first) {
		rl.first = r.Trace.Released
	}
	if r.Trace.Released.After(rl.last) {
		rl.last = r.Trace.Released
	}
	if len(rl.seen) == rl.want {
		close(rl.done)
	}
}

func (rl *releases) count() int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return len(rl.seen)
}

// result summarises the releases so far.
func (rl *releases) result() LatenessResult {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	late := slices.Sorted(slices.Values(rl.late))
	at := slices.Sorted(slices.Values(rl.at))
	res := LatenessResult{Items: len(rl.seen), Early: rl.early, Extra: rl.extra,
		P50: percentile(late, 50), P99: percentile(late, 99),
		Max: percentile(late, 100), SeenP99: percentile(at, 99),
		Span: rl.last.Sub(rl.first)}
	if res.Span > 0 {
		res.Rate = float64(res.Items) / res.Span.Seconds()
	}
	return res
}

// check returns ErrEarly, with the count, when an item came early.
func (rl *releases) check() error {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.early > 0 {
		return fmt.Errorf("bench lateness: %d of %d: %w", rl.early, len(rl.seen), ErrEarly)
	}
	return nil
}

// percentile is the nearest-rank p-th percentile of sorted; 100 is the
// maximum.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100
	return sorted[max(rank, 1)-1]
}

// PrintLateness writes the lateness figures.
func PrintLateness(w io.Writer, r LatenessResult) error {
	_, err := fmt.Fprintf(w, "submitted in %s\n"+
		"released late by: p50 %s, p99 %s, max %s; seen on READY p99 %s; early %d of %d\n"+
		"released over %s, first to last: %.0f items/s\n",
		roundDuration(r.Submit), roundDuration(r.P50), roundDuration(r.P99),
		roundDuration(r.Max), roundDuration(r.SeenP99), r.Early, r.Items,
		roundDuration(r.Span), r.Rate)
	return err
}
