package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/broker"
	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
	"github.com/perfpipe/perfpipe/services/batcher"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

// AdaptiveConfig shapes the runs of Adaptive.
type AdaptiveConfig struct {
	// Target is the p95 of batch latency the controller keeps to, and the
	// one the fixed sizes are judged by. Zero means 100 ms.
	Target time.Duration
	// Phase is how long each cost phase lasts, in wall time. Zero means
	// 15 s.
	Phase time.Duration
	// Costs are the sleep of every item in each phase, in order, in whole
	// milliseconds. Nil means 1 ms, then 3 ms.
	Costs []time.Duration
	// Sizes are the fixed batch sizes swept, each in a run of its own. Nil
	// means 1, 8, 16, 24, 32, 64 and 128.
	Sizes []int
	// MaxCount is the largest batch size the controller sets. Zero means
	// 128.
	MaxCount int
	// Window is the controller's window, in batches. Zero means the
	// batcher's default, 20.
	Window int
	// Outstanding is how many items are submitted and without a result at
	// any time. It must be at least twice the largest batch size, so that
	// a batch can fill while the one before runs. Zero means 256, the
	// scheduler's default MaxInFlight: the backlog a default deployment
	// lets through to the batcher and the agents.
	Outstanding int
	// Linger is the batcher's linger in every run. Zero means 1 s.
	Linger time.Duration
	// Settle bounds the wait for the outstanding results once the last
	// phase has ended. Zero means 30 s.
	Settle time.Duration
	// StoreDir is the folder that holds one fresh store per run. Empty
	// means the system's temporary folder.
	StoreDir string
}

func (c AdaptiveConfig) withDefaults() AdaptiveConfig {
	if c.Target == 0 {
		c.Target = batcher.DefaultTargetP95
	}
	if c.Phase == 0 {
		c.Phase = 15 * time.Second
	}
	if c.Costs == nil {
		c.Costs = []time.Duration{time.Millisecond, 3 * time.Millisecond}
	}
	if c.Sizes == nil {
		c.Sizes = []int{1, 8, 16, 24, 32, 64, 128}
	}
	if c.MaxCount == 0 {
		c.MaxCount = 128
	}
	if c.Outstanding == 0 {
		c.Outstanding = scheduler.DefaultMaxInFlight
	}
	if c.Linger == 0 {
		c.Linger = time.Second
	}
	if c.Settle == 0 {
		c.Settle = 30 * time.Second
	}
	return c
}

// tolerated is the longest p95 within P95Tolerance of the target.
func (c AdaptiveConfig) tolerated() time.Duration {
	return time.Duration(float64(c.Target) * (1 + P95Tolerance))
}

// validate reports the first field out of range, on c with defaults.
func (c AdaptiveConfig) validate() error {
	largest := max(c.MaxCount, slices.Max(append([]int{0}, c.Sizes...)))
	switch {
	case c.Target <= 0 || c.Phase <= 0 || c.Linger <= 0 || c.Settle <= 0:
		return errors.New("target, phase, linger and settle must be positive")
	case len(c.Costs) == 0 || len(c.Sizes) == 0:
		return errors.New("want at least one cost and one size")
	case slices.Min(c.Sizes) < 1 || c.MaxCount < 1 || c.Window < 0:
		return fmt.Errorf("sizes %v, max count %d, window %d: want at least 1",
			c.Sizes, c.MaxCount, c.Window)
	case c.Outstanding < 2*largest:
		return fmt.Errorf("outstanding %d below twice the largest batch size %d: "+
			"batches could not fill", c.Outstanding, largest)
	}
	for _, d := range c.Costs {
		if d < 0 || d%time.Millisecond != 0 {
			return fmt.Errorf("cost %s: want whole milliseconds, not negative", d)
		}
	}
	return nil
}

// AdaptiveResult is what Adaptive measured.
type AdaptiveResult struct {
	// Config is the scenario run, with its defaults; its Target is the
	// p95 the runs are judged by.
	Config AdaptiveConfig
	// Fixed are the runs of the fixed sizes, in the order of the config.
	Fixed []AdaptiveRun
	// Adaptive is the run of the controller.
	Adaptive AdaptiveRun
}

// AdaptiveRun is one run of the scenario.
type AdaptiveRun struct {
	// Size is the fixed batch size, or 0 for the adaptive run.
	Size int
	// P95 is the p95 of the latency of every batch started within the
	// run, from its first item starting to its last finishing.
	P95 time.Duration
	// Batches is how many batches P95 is taken over.
	Batches int
	// Over is how many of them took longer than 1+P95Tolerance times the
	// target: when more than 5% of Batches, P95 is over it too.
	Over int
	// PerSecond is the items finished within the run per second.
	PerSecond float64
	// Phases are the figures of each cost phase.
	Phases []PhaseFigures
	// Counts is the controller's batch size at each second of the run;
	// nil for a fixed size.
	Counts []int
}

// PhaseFigures are the figures of one cost phase of a run.
type PhaseFigures struct {
	// SteadyP95 is the p95 of batch latency over the batches started in
	// the second half of the phase whose items all have its cost.
	SteadyP95 time.Duration
	// MeanSize is the mean items per batch over the same batches.
	MeanSize float64
	// Count is the batch size the batcher was set to at the end of the
	// phase.
	Count int
	// PerSecond is the items finished within the phase per second.
	PerSecond float64
}

// Goals of the adaptive mode, from issue #4.
const (
	// P95Tolerance is how far from the target, relatively, the adaptive
	// p95 may be; the best fixed size is the one within it above.
	P95Tolerance = 0.2
	// MinThroughput is the least fraction of the best fixed size's
	// throughput the adaptive run must reach.
	MinThroughput = 0.9
)

// AdaptiveVerdict compares the adaptive run with the fixed sizes.
type AdaptiveVerdict struct {
	// P95Ratio is the adaptive p95 over the target.
	P95Ratio float64
	// Best is the fixed run of highest throughput whose p95 is at most
	// 1+P95Tolerance times the target; its Size is 0 when there is none.
	Best AdaptiveRun
	// Unbounded is the fixed run of highest throughput.
	Unbounded AdaptiveRun
	// VsBest and VsUnbounded are the adaptive throughput over theirs, or
	// 0 when there is no such run.
	VsBest, VsUnbounded float64
}

// Verdict compares the adaptive run with the fixed sizes.
func (r AdaptiveResult) Verdict() AdaptiveVerdict {
	limit := r.Config.tolerated()
	v := AdaptiveVerdict{P95Ratio: float64(r.Adaptive.P95) / float64(r.Config.Target)}
	for _, f := range r.Fixed {
		if f.P95 <= limit && f.PerSecond > v.Best.PerSecond {
			v.Best = f
		}
		if f.PerSecond > v.Unbounded.PerSecond {
			v.Unbounded = f
		}
	}
	if v.Best.PerSecond > 0 {
		v.VsBest = r.Adaptive.PerSecond / v.Best.PerSecond
	}
	if v.Unbounded.PerSecond > 0 {
		v.VsUnbounded = r.Adaptive.PerSecond / v.Unbounded.PerSecond
	}
	return v
}

// P95Met reports whether the adaptive p95 is within P95Tolerance of the
// target.
func (v AdaptiveVerdict) P95Met() bool { return math.Abs(v.P95Ratio-1) <= P95Tolerance }

// ThroughputMet reports whether the adaptive run reached MinThroughput of
// the best fixed size within the tolerance.
func (v AdaptiveVerdict) ThroughputMet() bool { return v.VsBest >= MinThroughput }

// adaptiveKind is the kind of the items; its handler sleeps.
const adaptiveKind = "sleep"

// Adaptive measures the batcher's adaptive mode end to end: items of kind
// sleep go through scheduler, batcher and agent, each on its own
// connection, on a fresh embedded server per run. The items sleep
// Costs[0] each for a Phase, then Costs[1] for a Phase, and so on. Each
// fixed size of Sizes runs the scenario, then the batcher in adaptive
// mode with Target as its p95 and MaxCount as its largest size, starting
// from batcher.DefaultMaxCount.
//
// The runs are fed from a backlog that never runs dry: Outstanding items
// are submitted and without a result at all times, a new one submitted as
// a result comes in, so the phase of the items running follows the wall
// clock within Outstanding items. The scheduler has no credit limit; the
// bench's bound takes its place.
//
// The agent runs with one worker. Its worker pool is shared by every
// batch, and it pulls a batch as soon as a worker is free, so with more
// workers a batch's items run side by side and batches overlap, and its
// latency no longer grows with its size in a way a reader can check. One
// worker makes a batch of n items take n times an item's cost, and the
// pull of the next batch a cost per batch that larger batches spread.
//
// The batcher's linger is 1 s rather than its 10 ms default. Once the
// backlog is in batches, new items arrive one per result, as the agent
// finishes them; with a 10 ms linger a batch would close at the handful
// that arrive within it, whatever the count, and every run would measure
// the linger instead of the batch size.
//
// Batch latency is measured the way the controller defines it, but from
// what the bench sees: the batches on PERFPIPE_BATCHES give each batch's
// items, the results on PERFPIPE_RESULTS their Started and Finished.
func Adaptive(ctx context.Context, cfg AdaptiveConfig) (AdaptiveResult, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return AdaptiveResult{}, fmt.Errorf("bench adaptive: %w", err)
	}
	res := AdaptiveResult{Config: cfg}
	for _, n := range cfg.Sizes {
		run, err := runScenario(ctx, cfg, n)
		if err != nil {
			return res, fmt.Errorf("bench adaptive: fixed size %d: %w", n, err)
		}
		res.Fixed = append(res.Fixed, run)
	}

	run, err := runScenario(ctx, cfg, 0)
	if err != nil {
		return res, fmt.Errorf("bench adaptive: adaptive run: %w", err)
	}
	res.Adaptive = run
	return res, nil
}

// runScenario runs the scenario once on a fresh server, with a fixed
// batch size or, when size is 0, the controller.
func runScenario(ctx context.Context, cfg AdaptiveConfig, size int) (AdaptiveRun, error) {
	dir, err := os.MkdirTemp(cfg.StoreDir, "perfpipe-bench-adaptive-")
	if err != nil {
		return AdaptiveRun{}, err
	}
	defer os.RemoveAll(dir)
	srv, err := broker.Start(broker.Config{Port: -1, StoreDir: dir})
	if err != nil {
		return AdaptiveRun{}, err
	}
	defer srv.Shutdown()

	sc, err := startScenario(ctx, srv.ClientURL(), cfg, size)
	if err != nil {
		return AdaptiveRun{}, err
	}
	start := time.Now()
	err = sc.drive(ctx, start)
	if stopErr := sc.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return AdaptiveRun{}, err
	}

	spans, finished := sc.log.spans()
	run := figures(spans, finished, start, cfg.Phase, len(cfg.Costs), cfg.tolerated())
	run.Size = size
	for i := range run.Phases {
		run.Phases[i].Count = sc.phaseCounts[i]
	}
	if size == 0 {
		run.Counts = sc.counts
	}
	return run, nil
}

// scenario is one run's pipeline, the log of its batches and results,
// and the credits that bound the items outstanding.
type scenario struct {
	cfg    AdaptiveConfig
	p      *pipeline
	log    *batchLog
	follow []jetstream.ConsumeContext
	count  func() int // the batch size the batcher is set to now
	// credits holds one token per item submitted and without a result.
	credits chan struct{}
	prefix  string

	phaseCounts []int // count at the end of each phase
	counts      []int // count at each second
}

// startScenario starts the services and the followers of batches and
// results.
func startScenario(ctx context.Context, url string, cfg AdaptiveConfig,
	size int) (*scenario, error) {
	sc := &scenario{cfg: cfg, log: newBatchLog(), prefix: nuid.Next(),
		credits:     make(chan struct{}, cfg.Outstanding),
		phaseCounts: make([]int, len(cfg.Costs))}
	p, err := startServices(ctx, url, func(conns []*bus.Conn, log *slog.Logger) (
		[]func(context.Context) error, error) {
		return sc.services(conns, size, log)
	})
	if err != nil {
		return nil, err
	}
	sc.p = p

	onResult := func(r *events.Result) {
		if sc.log.result(r) {
			sc.release()
		}
	}
	if sc.follow, err = followLog(ctx, p.client, sc.log, onResult); err != nil {
		sc.stop()
		return nil, err
	}
	return sc, nil
}

// services builds the scheduler without a credit limit, the batcher with
// a fixed size or the controller, and an agent of one worker (see
// Adaptive).
func (sc *scenario) services(conns []*bus.Conn, size int, log *slog.Logger) (
	[]func(context.Context) error, error) {
	sched, err := scheduler.New(conns[0], scheduler.Config{MaxInFlight: -1}, log)
	if err != nil {
		return nil, err
	}
	bat, err := batcher.New(conns[1], sc.batcherConfig(size), log)
	if err != nil {
		return nil, err
	}
	sc.count = func() int { return size }
	if ctrl := bat.Controller(); ctrl != nil {
		sc.count = func() int { return ctrl.Count(adaptiveKind) }
	}

	acfg := agent.Config{Name: "bench", Workers: 1,
		Admission: agent.AdmissionConfig{Disabled: true}}
	reg, err := agent.NewBuiltins(acfg)
	if err != nil {
		return nil, err
	}
	ag, err := agent.New(conns[2], nil, reg, acfg, log)
	if err != nil {
		return nil, err
	}
	return []func(context.Context) error{sched.Run, bat.Run, ag.Run}, nil
}

// batcherConfig is a fixed size, or the controller when size is 0.
func (sc *scenario) batcherConfig(size int) batcher.Config {
	if size > 0 {
		return batcher.Config{Default: batcher.Limits{MaxCount: size, Linger: sc.cfg.Linger}}
	}
	return batcher.Config{
		Default: batcher.Limits{MaxCount: batcher.DefaultMaxCount, Linger: sc.cfg.Linger},
		Adaptive: &batcher.AdaptiveConfig{TargetP95: sc.cfg.Target,
			MaxCount: sc.cfg.MaxCount, Window: sc.cfg.Window},
	}
}

// drive submits an item whenever fewer than Outstanding are without a
// result, with the cost of the phase the wall clock is in, until the last
// phase ends; it then waits for the outstanding results. It samples the
// batch size every second and at the end of each phase.
func (sc *scenario) drive(ctx context.Context, start time.Time) error {
	end := time.NewTimer(sc.cfg.Phase * time.Duration(len(sc.cfg.Costs)))
	defer end.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()

	phase := 0
	for i := 0; ; i++ {
		select {
		case sc.credits <- struct{}{}:
		case <-tick.C:
			sc.counts = append(sc.counts, sc.count())
			continue
		case <-end.C:
			for ; phase < len(sc.phaseCounts); phase++ {
				sc.phaseCounts[phase] = sc.count()
			}
			return sc.settle(ctx)
		case <-sc.p.ctx.Done():
			return sc.failed(ctx)
		}

		now := min(int(time.Since(start)/sc.cfg.Phase), len(sc.cfg.Costs)-1)
		for ; phase < now; phase++ {
			sc.phaseCounts[phase] = sc.count()
		}
		if err := sc.submit(ctx, phase, i); err != nil {
			return err
		}
	}
}

// submit publishes item i of phase, which sleeps the phase's cost.
func (sc *scenario) submit(ctx context.Context, phase, i int) error {
	ms := sc.cfg.Costs[phase].Milliseconds()
	req := &events.WorkRequest{ID: sc.prefix + "-" + strconv.Itoa(i), Kind: adaptiveKind,
		Payload: events.Payload(`{"ms":` + strconv.FormatInt(ms, 10) + `}`)}
	req.Trace.Submitted = time.Now()
	sc.log.submitted(req.ID, phase)
	return sc.p.client.Publish(ctx, events.SubmitSubject(req.Kind), req, req.ID)
}

// release returns the credit of an item that has its result.
func (sc *scenario) release() {
	select {
	case <-sc.credits:
	default:
	}
}

// settle waits until every submitted item has its result, Settle passes
// or a service stops.
func (sc *scenario) settle(ctx context.Context) error {
	timeout := time.NewTimer(sc.cfg.Settle)
	defer timeout.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for len(sc.credits) > 0 {
		select {
		case <-poll.C:
		case <-timeout.C:
			return fmt.Errorf("%d results missing %s after the last phase",
				len(sc.credits), sc.cfg.Settle)
		case <-sc.p.ctx.Done():
			return sc.failed(ctx)
		}
	}
	return nil
}

// failed is the error of a run whose services stopped early.
func (sc *scenario) failed(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("a service stopped during the run")
}

// stop stops the followers, then the services.
func (sc *scenario) stop() error {
	for _, f := range sc.follow {
		f.Stop()
	}
	return sc.p.stop()
}

// startServices connects a scheduler, a batcher, an agent and a client,
// each on its own connection as perfpipe up does, ensures the streams, and
// runs the services that build makes of the first three connections until
// the pipeline stops.
func startServices(ctx context.Context, url string,
	build func([]*bus.Conn, *slog.Logger) ([]func(context.Context) error, error)) (
	*pipeline, error) {
	log := slog.New(slog.DiscardHandler)
	p := &pipeline{}
	for _, name := range []string{"scheduler", "batcher", "agent", "bench"} {
		c, err := bus.Connect(ctx, url, "perfpipe-"+name, log)
		if err != nil {
			p.closeConns()
			return nil, err
		}
		p.conns = append(p.conns, c)
	}
	p.client = p.conns[3]
	if err := p.client.EnsureStreams(ctx); err != nil {
		p.closeConns()
		return nil, err
	}

	runs, err := build(p.conns[:3], log)
	if err != nil {
		p.closeConns()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.group, p.ctx = errgroup.WithContext(runCtx)
	for _, run := range runs {
		p.group.Go(func() error { return run(p.ctx) })
	}
	return p, nil
}
