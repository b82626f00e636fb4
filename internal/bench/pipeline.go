package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/perfpipe/perfpipe/internal/broker"
	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
	"github.com/perfpipe/perfpipe/services/batcher"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

// PipelineConfig shapes the work-path runs of Pipeline.
type PipelineConfig struct {
	// Items is how many no-op items each throughput run submits. Zero
	// means 20,000.
	Items int
	// BatchCount is the batcher's most items per batch in the batched
	// runs; the unbatched run always uses 1. Zero means 32.
	BatchCount int
	// LatencyFor is how long the half-rate run submits. Zero means 5 s.
	LatencyFor time.Duration
	// Settle bounds the wait for the last result after the last item is
	// submitted. Zero means 2 min.
	Settle time.Duration
	// StoreDir is the folder that holds one fresh store per run. Empty
	// means the system's temporary folder.
	StoreDir string
}

func (c PipelineConfig) withDefaults() PipelineConfig {
	if c.Items == 0 {
		c.Items = 20_000
	}
	if c.BatchCount == 0 {
		c.BatchCount = batcher.DefaultMaxCount
	}
	if c.LatencyFor == 0 {
		c.LatencyFor = 5 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Minute
	}
	return c
}

// Throughput is one run of no-op items through the work path.
type Throughput struct {
	// BatchCount is the batcher's most items per batch.
	BatchCount int
	// Items is how many items were submitted.
	Items int
	// OK counts the items with an ok result; Extra counts results beyond
	// the first of an item, and NotOK results of another status.
	OK, Extra, NotOK int
	// Seconds runs from the first submit to the last result.
	Seconds float64
	// PerSecond is Items / Seconds.
	PerSecond float64
}

// StageLatency is the time one of Result.Stages took, over the items of
// the half-rate run.
type StageLatency struct {
	Stage    string
	P50, P99 time.Duration
}

// PipelineResult is what Pipeline measured.
type PipelineResult struct {
	// Batched and Unbatched submit as fast as they can, with the batch
	// count of the config and with 1.
	Batched, Unbatched Throughput
	// TargetRate is half of Batched.PerSecond, in items per second: the
	// rate the latency run submits at.
	TargetRate float64
	// Latency is the half-rate run, batched.
	Latency Throughput
	// Stages are the p50 and p99 of each stage in the latency run.
	Stages []StageLatency
}

// Pipeline measures the work path: no-op items (kind sleep, 0 ms) go
// through scheduler, batcher and agent, each on its own connection as
// `perfpipe up` runs them, and their results are followed on
// PERFPIPE_RESULTS. It times Items submitted as fast as possible with and
// without batching, then submits at half the batched rate for LatencyFor
// and takes the quantiles of each stage. Every run has its own embedded
// server in a fresh store, so no stream, consumer or bucket carries over.
func Pipeline(ctx context.Context, cfg PipelineConfig) (PipelineResult, error) {
	cfg = cfg.withDefaults()
	if cfg.Items < 1 || cfg.BatchCount < 1 {
		return PipelineResult{}, fmt.Errorf("bench pipeline: items %d, batch count %d: "+
			"want at least 1", cfg.Items, cfg.BatchCount)
	}
	var (
		res PipelineResult
		err error
	)
	if res.Batched, _, err = runPipeline(ctx, cfg, cfg.BatchCount, cfg.Items, 0); err != nil {
		return res, fmt.Errorf("bench pipeline batched: %w", err)
	}
	if res.Unbatched, _, err = runPipeline(ctx, cfg, 1, cfg.Items, 0); err != nil {
		return res, fmt.Errorf("bench pipeline unbatched: %w", err)
	}

	res.TargetRate = res.Batched.PerSecond / 2
	n := max(1, int(res.TargetRate*cfg.LatencyFor.Seconds()))
	var stages []quantile.Summary
	res.Latency, stages, err = runPipeline(ctx, cfg, cfg.BatchCount, n, res.TargetRate)
	if err != nil {
		return res, fmt.Errorf("bench pipeline half rate: %w", err)
	}
	for i, name := range stageNames {
		res.Stages = append(res.Stages, StageLatency{Stage: name,
			P50: time.Duration(stages[i].Quantile(0.5)),
			P99: time.Duration(stages[i].Quantile(0.99))})
	}
	return res, nil
}

// stageNames name Result.Stages in the order stageValues lists them.
var stageNames = []string{"queued", "scheduled", "batched", "wait", "run", "end to end"}

func stageValues(s events.Stages) []events.Duration {
	return []events.Duration{s.Queued, s.Scheduled, s.Batched, s.Wait, s.Run, s.EndToEnd}
}

// runPipeline starts a fresh server and the services, submits n items at
// perSec per second (0: as fast as possible), waits for their results and
// stops everything.
func runPipeline(ctx context.Context, cfg PipelineConfig, batchCount, n int,
	perSec float64) (Throughput, []quantile.Summary, error) {
	dir, err := os.MkdirTemp(cfg.StoreDir, "perfpipe-bench-pipeline-")
	if err != nil {
		return Throughput{}, nil, err
	}
	defer os.RemoveAll(dir)
	srv, err := broker.Start(broker.Config{Port: -1, StoreDir: dir})
	if err != nil {
		return Throughput{}, nil, err
	}
	defer srv.Shutdown()

	p, err := startPipeline(ctx, srv.ClientURL(), batchCount, n)
	if err != nil {
		return Throughput{}, nil, err
	}
	res, err := p.measure(ctx, n, perSec, cfg.Settle)
	if stopErr := p.stop(); err == nil {
		err = stopErr
	}
	res.BatchCount = batchCount
	return res, p.tally.summaries(), err
}

// pipeline is one run's services and the follower of their results.
type pipeline struct {
	conns  []*bus.Conn // scheduler, batcher, agent, client
	client *bus.Conn
	ctx    context.Context // the services'; done when one fails
	cancel context.CancelFunc
	group  *errgroup.Group
	follow jetstream.ConsumeContext
	tally  *tally
}

// startPipeline connects, builds and runs the services and follows the
// results of n items.
func startPipeline(ctx context.Context, url string, batchCount, n int) (*pipeline, error) {
	p, err := startServices(ctx, url, func(conns []*bus.Conn, log *slog.Logger) (
		[]func(context.Context) error, error) {
		return services(conns, batchCount, log)
	})
	if err != nil {
		return nil, err
	}
	p.tally = newTally(n)
	if p.follow, err = followResults(ctx, p.client, p.tally); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// services builds scheduler, batcher and agent with their defaults, but
// for the batch count and the agent's admission, which is off: no monitor
// runs, and the bench itself loads the host.
func services(conns []*bus.Conn, batchCount int, log *slog.Logger) (
	[]func(context.Context) error, error) {
	sched, err := scheduler.New(conns[0], scheduler.Config{}, log)
	if err != nil {
		return nil, err
	}
	bat, err := batcher.New(conns[1], batcher.Config{
		Default: batcher.Limits{MaxCount: batchCount},
	}, log)
	if err != nil {
		return nil, err
	}

	acfg := agent.Config{Name: "bench", Admission: agent.AdmissionConfig{Disabled: true}}
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

// measure submits n items and waits until each has a result or settle
// has passed since the last submit.
func (p *pipeline) measure(ctx context.Context, n int, perSec float64,
	settle time.Duration) (Throughput, error) {
	lim := rate.NewLimiter(rate.Inf, 1)
	if perSec > 0 {
		lim = rate.NewLimiter(rate.Limit(perSec), max(1, int(perSec/100)))
	}
	start := time.Now()
	if err := submitNoop(ctx, p.client, n, lim); err != nil {
		return Throughput{Items: n}, err
	}

	timer := time.NewTimer(settle)
	defer timer.Stop()
	select {
	case <-p.tally.done:
	case <-timer.C:
	case <-p.ctx.Done():
		if ctx.Err() != nil {
			return Throughput{Items: n}, ctx.Err()
		}
		return Throughput{Items: n}, errors.New("a service stopped during the run")
	}
	res := p.tally.throughput(start)
	if res.OK+res.NotOK < n {
		return res, fmt.Errorf("%d of %d results within %s of the last submit",
			res.OK+res.NotOK, n, settle)
	}
	return res, nil
}

// stop stops the follower and the services, waits for them to drain and
// closes the connections.
func (p *pipeline) stop() error {
	if p.follow != nil {
		p.follow.Stop()
	}
	p.cancel()
	err := p.group.Wait()
	p.closeConns()
	return err
}

func (p *pipeline) closeConns() {
	for _, c := range p.conns {
		c.Close()
	}
}

// maxUnacked bounds the asynchronous publishes waiting for their ack.
const maxUnacked = 1024

// submitNoop publishes n sleep items of 0 ms as lim allows, without
// waiting for each ack, and returns when the stream has acked them all.
func submitNoop(ctx context.Context, conn *bus.Conn, n int, lim *rate.Limiter) error {
	prefix := nuid.Next()
	sub := newSubmitter(conn)
	for i := range n {
		if err := lim.Wait(ctx); err != nil {
			return err
		}
		req := &events.WorkRequest{ID: prefix + "-" + strconv.Itoa(i), Kind: "sleep",
			Payload: events.Payload(`{"ms":0}`)}
		if err := sub.submit(ctx, req); err != nil {
			return err
		}
	}
	return sub.wait(ctx)
}

// submitter publishes work requests without waiting for each ack, at most
// maxUnacked of them unacked at a time.
type submitter struct {
	conn    *bus.Conn
	unacked []jetstream.PubAckFuture
}

func newSubmitter(conn *bus.Conn) *submitter {
	return &submitter{conn: conn, unacked: make([]jetstream.PubAckFuture, 0, maxUnacked)}
}

// submit stamps req as submitted now and publishes it with its ID as the
// message ID, first waiting for the older half of the unacked publishes
// when maxUnacked are out.
func (s *submitter) submit(ctx context.Context, req *events.WorkRequest) error {
	req.Trace.Submitted = time.Now()
	msg, err := bus.Message(events.SubmitSubject(req.Kind), req, req.ID)
	if err != nil {
		return err
	}
	fut, err := s.conn.JS.PublishMsgAsync(msg)
	if err != nil {
		return fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	if s.unacked = append(s.unacked, fut); len(s.unacked) == maxUnacked {
		if err := awaitAcks(ctx, s.unacked[:maxUnacked/2]); err != nil {
			return err
		}
		s.unacked = append(s.unacked[:0], s.unacked[maxUnacked/2:]...)
	}
	return nil
}

// wait returns once every publish is acked.
func (s *submitter) wait(ctx context.Context) error {
	err := awaitAcks(ctx, s.unacked)
	s.unacked = s.unacked[:0]
	return err
}

func awaitAcks(ctx context.Context, futs []jetstream.PubAckFuture) error {
	for _, fut := range futs {
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			return fmt.Errorf("publish %s: %w", fut.Msg().Subject, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// followResults feeds every result stored from now on to t.
func followResults(ctx context.Context, conn *bus.Conn, t *tally) (
	jetstream.ConsumeContext, error) {
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamResults,
		jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.ResultAll},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
	if err != nil {
		return nil, fmt.Errorf("follow results: %w", err)
	}
	return cons.Consume(func(m jetstream.Msg) {
		var r events.Result
		if events.Unmarshal(m.Data(), &r) == nil {
			t.add(&r, time.Now())
		}
	})
}

// tally counts the results of one run and summarises their stages.
type tally struct {
	mu     sync.Mutex
	want   int
	seen   map[string]bool
	ok     int
	notOK  int
	extra  int
	last   time.Time
	stages []quantile.Summary // by stageNames
	done   chan struct{}
}

func newTally(want int) *tally {
	return &tally{want: want, seen: make(map[string]bool, want),
		stages: make([]quantile.Summary, len(stageNames)), done: make(chan struct{})}
}

// add counts r, received at now; the first result of an item counts.
func (t *tally) add(r *events.Result, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen[r.ID] {
		t.extra++
		return
	}
	t.seen[r.ID] = true
	t.last = now
	if r.Status != events.StatusOK {
		t.notOK++
	} else {
		t.ok++
		for i, d := range stageValues(r.Stages) {
			_ = t.stages[i].Add(float64(d))
		}
	}
	if len(t.seen) == t.want {
		close(t.done)
	}
}

// throughput is the run so far, timed from start to the last result.
func (t *tally) throughput(start time.Time) Throughput {
	t.mu.Lock()
	defer t.mu.Unlock()
	res := Throughput{Items: t.want, OK: t.ok, NotOK: t.notOK, Extra: t.extra}
	if t.last.After(start) {
		res.Seconds = t.last.Sub(start).Seconds()
		res.PerSecond = float64(t.want) / res.Seconds
	}
	return res
}

// summaries returns the stage summaries of the ok results, by stageNames.
func (t *tally) summaries() []quantile.Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stages
}

// PrintPipeline writes the throughput runs side by side, their ratio, and
// the stage latencies of the half-rate run.
func PrintPipeline(w io.Writer, r PipelineResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "run\tbatch count\titems\tok\tseconds\titems/s")
	for _, row := range []struct {
		name string
		t    Throughput
	}{{"batched", r.Batched}, {"unbatched", r.Unbatched}, {"half rate", r.Latency}} {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.2f\t%.0f\n", row.name, row.t.BatchCount,
			row.t.Items, row.t.OK, row.t.Seconds, row.t.PerSecond)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Unbatched.PerSecond > 0 {
		fmt.Fprintf(w, "batched / unbatched: %.2fx\n", r.Batched.PerSecond/r.Unbatched.PerSecond)
	}

	fmt.Fprintf(w, "\nstage latency at half the batched rate (%.0f items/s asked):\n",
		r.TargetRate)
	fmt.Fprintln(tw, "stage\tp50\tp99")
	for _, s := range r.Stages {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Stage, roundDuration(s.P50), roundDuration(s.P99))
	}
	return tw.Flush()
}

// roundDuration keeps three significant figures or so of d.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond / 10)
	}
}
