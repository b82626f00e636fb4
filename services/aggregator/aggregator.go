package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// ServiceName is the name the aggregator records its own timings under.
const ServiceName = "aggregator"

// warnEvery rate-limits each kind of Warn log.
const warnEvery = 10 * time.Second

// Stats are the service's counters since New.
type Stats struct {
	// Received counts telemetry messages consumed, redeliveries included.
	Received int64
	// Skipped counts redelivered messages that were already applied.
	Skipped int64
	// Applied counts samples placed in a bucket.
	Applied int64
	// Late and Future count valid samples outside every window.
	Late, Future int64
	// Rejected counts bad input: undecodable messages, negative durations,
	// corrupt summaries.
	Rejected int64
	// Foreign counts samples, or undecoded batch deltas, of groups that
	// another partition keeps.
	Foreign int64
	// Overflowed counts samples added to the overflow group.
	Overflowed int64
	// Groups is the number of groups held now, the overflow group included.
	Groups int
	// Flushes counts flushes; Finals counts final snapshots the snapshots
	// stream acknowledged.
	Flushes, Finals int64
	// PublishFailed counts snapshots that could not be published.
	PublishFailed int64
	// StoreFailed counts flushes whose store write failed.
	StoreFailed int64
	// Checkpoints and CheckpointFailed count checkpoint writes.
	Checkpoints, CheckpointFailed int64
	// CheckpointSeq is the stream sequence the latest checkpoint holds.
	CheckpointSeq uint64
}

// counters are the atomics behind Stats.
type counters struct {
	received, skipped, applied, late, future, rejected atomic.Int64
	foreign, overflowed, flushes, finals               atomic.Int64
	publishFailed, storeFailed                         atomic.Int64
	checkpoints, checkpointFailed                      atomic.Int64
	checkpointSeq                                      atomic.Uint64
}

// position is the last message applied.
type position struct {
	seq uint64
	ts  int64
	msg jetstream.Msg
}

// Service is the aggregator. Build it with New and start it with Run.
type Service struct {
	conn  *bus.Conn
	store cache.Store
	cfg   Config
	name  string // of the consumer and the checkpoint
	log   *slog.Logger
	rec   *timing.Recorder
	table *table

	cons    jetstream.Consumer
	objects jetstream.ObjectStore

	// applyMu is held while one message is applied, so that a checkpoint
	// holds a whole number of messages.
	applyMu    sync.Mutex
	pos        position
	appliedSeq atomic.Uint64
	appliedTs  atomic.Int64

	// outbox holds the final snapshots not yet acknowledged by the stream.
	outMu    sync.Mutex
	outbox   []final
	finalGen atomic.Uint64
	// lastMark is what the latest checkpoint holds; the checkpoint loop
	// owns it, and stop after the loop.
	lastMark mark

	mu     sync.RWMutex
	latest []events.Snapshot

	stats                                     counters
	warnReject, warnPublish, warnStore        limiter
	warnSlow, warnCheckpoint, warnUnavailable limiter
}

// New returns an aggregator that consumes from conn and writes the latest
// snapshots to store; a nil store means NATS only.
func New(conn *bus.Conn, store cache.Store, cfg Config, log *slog.Logger) (*Service, error) {
	if conn == nil {
		return nil, errors.New("aggregator: nil connection")
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", ServiceName)
	rec, err := timing.New(conn.JS, ServiceName, timing.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("aggregator: %w", err)
	}
	s := &Service{
		conn: conn, store: store, cfg: cfg, name: cfg.consumerName(), log: log,
		rec: rec, table: newTable(cfg),
	}
	s.appliedTs.Store(minNanos)
	return s, nil
}

// Run restores the latest checkpoint, then consumes telemetry and
// publishes snapshots until ctx is cancelled. It then applies the events
// it had buffered, flushes and checkpoints one last time and returns nil;
// an error means the consumer or the checkpoint store failed.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("aggregator started", "consumer", s.name, "windows", s.cfg.Windows,
		"resolution", s.cfg.Resolution, "partition", s.cfg.Partition,
		"partitions", s.cfg.Partitions, "store", s.storeName())
	if err := s.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	// Timings flush until the last snapshot flush, then once more.
	timings, stopTimings := context.WithCancel(context.WithoutCancel(ctx))
	var tg errgroup.Group
	tg.Go(func() error { return s.rec.Run(timings) })

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.consume(gctx) })
	g.Go(func() error { return s.flushLoop(gctx) })
	g.Go(func() error { return s.checkpointLoop(gctx) })
	err := g.Wait()

	s.stop(ctx)
	stopTimings()
	_ = tg.Wait()
	s.log.Info("aggregator stopped", "received", s.stats.received.Load(),
		"checkpoint_seq", s.stats.checkpointSeq.Load(), "err", err)
	return err
}

// start restores the checkpoint and creates the consumer after it.
func (s *Service) start(ctx context.Context) error {
	if err := s.openCheckpoints(ctx); err != nil {
		return err
	}
	if err := s.restore(ctx); err != nil {
		return err
	}
	cons, err := s.consumer(ctx, s.appliedSeq.Load())
	if err != nil {
		return err
	}
	s.cons = cons
	return nil
}

// stop flushes and checkpoints within the store timeout.
func (s *Service) stop(ctx context.Context) {
	final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.StoreTimeout)
	defer cancel()
	s.flush(final, time.Now())
	s.checkpoint(final)
	if err := s.conn.NC.FlushWithContext(final); err != nil {
		s.log.Debug("final nats flush", "err", err)
	}
}

// Stats returns the counters since New.
func (s *Service) Stats() Stats {
	c := &s.stats
	return Stats{
		Received: c.received.Load(), Skipped: c.skipped.Load(), Applied: c.applied.Load(),
		Late: c.late.Load(), Future: c.future.Load(), Rejected: c.rejected.Load(),
		Foreign: c.foreign.Load(), Overflowed: c.overflowed.Load(), Groups: s.table.len(),
		Flushes: c.flushes.Load(), Finals: c.finals.Load(),
		PublishFailed: c.publishFailed.Load(), StoreFailed: c.storeFailed.Load(),
		Checkpoints: c.checkpoints.Load(), CheckpointFailed: c.checkpointFailed.Load(),
		CheckpointSeq: c.checkpointSeq.Load(),
	}
}

// Counters reports what became of the telemetry as a whole, for
// /metrics: messages received and skipped, samples applied, late, future,
// foreign and overflowed, and rejected input (undecodable messages
// included, which belong to no group).
func (s *Service) Counters() map[string]int64 {
	st := s.Stats()
	return map[string]int64{
		"received": st.Received, "skipped": st.Skipped, "applied": st.Applied,
		"late": st.Late, "future": st.Future, "rejected": st.Rejected,
		"foreign": st.Foreign, "overflowed": st.Overflowed,
	}
}

// Snapshots returns copies of the latest partial snapshots, sorted by
// service and op. An empty filter returns all; a filter without a dot
// matches one service; a filter with a dot matches the snapshots whose
// "service.op" starts with it. It is safe for concurrent use.
func (s *Service) Snapshots(filter string) []events.Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []events.Snapshot{}
	for _, snap := range s.latest {
		if matches(filter, snap.Service, snap.Op) {
			out = append(out, clone(snap))
		}
	}
	return out
}

func matches(filter, service, op string) bool {
	if filter == "" {
		return true
	}
	if !strings.Contains(filter, ".") {
		return filter == service
	}
	return strings.HasPrefix(service+"."+op, filter)
}

// clone copies snap so that the caller cannot change the figures held;
// the latency pointers are shared, as nothing writes through them.
func clone(snap events.Snapshot) events.Snapshot {
	if snap.Cache != nil {
		c := *snap.Cache
		snap.Cache = &c
	}
	if snap.Resource != nil {
		r := *snap.Resource
		snap.Resource = &r
	}
	snap.Rollups = append([]events.Figures(nil), snap.Rollups...)
	return snap
}

func (s *Service) storeName() string {
	if s.store == nil {
		return "none"
	}
	return s.store.Name()
}

func (s *Service) setLatest(snaps []events.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest = snaps
}

// limiter lets one event through per warnEvery.
type limiter struct {
	last atomic.Int64
}

func (l *limiter) allow() bool {
	now := time.Now().UnixNano()
	last := l.last.Load()
	if last != 0 && now-last < int64(warnEvery) {
		return false
	}
	return l.last.CompareAndSwap(last, now)
}
