package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/timing"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// ServiceName is the name the aggregator records its own timings under.
const ServiceName = "aggregator"

// pullBatch is how many events the consumer buffers at most.
const pullBatch = 500

// warnEvery rate-limits each kind of Warn log.
const warnEvery = 10 * time.Second

// Stats are the service's counters since New.
type Stats struct {
	// Received counts telemetry messages consumed.
	Received int64
	// Applied counts samples placed in a window.
	Applied int64
	// Dropped counts valid samples outside their window.
	Dropped int64
	// Rejected counts undecodable or invalid messages.
	Rejected int64
	// Flushes counts snapshot flushes.
	Flushes int64
	// PublishFailed counts snapshots that could not be published.
	PublishFailed int64
	// StoreFailed counts flushes whose store write failed.
	StoreFailed int64
}

// Service is the aggregator. Build it with New and start it with Run.
type Service struct {
	conn   *bus.Conn
	store  cache.Store
	cfg    Config
	log    *slog.Logger
	rec    *timing.Recorder
	groups *table

	mu     sync.RWMutex
	latest []events.Snapshot

	received, applied, dropped, rejected atomic.Int64
	flushes, publishFailed, storeFailed  atomic.Int64

	warnReject, warnPublish, warnStore, warnSlow limiter
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
	return &Service{
		conn:   conn,
		store:  store,
		cfg:    cfg,
		log:    log,
		rec:    timing.NewRecorder(conn, ServiceName, log),
		groups: newTable(cfg),
	}, nil
}

// Run consumes telemetry and publishes snapshots until ctx is cancelled.
// It then applies the events it had buffered, flushes one last time and
// returns nil; an error means the consumer failed.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("aggregator started", "durable", s.cfg.Durable, "window", s.cfg.Window,
		"resolution", s.cfg.Resolution, "store", s.storeName())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.consume(gctx) })
	g.Go(func() error { return s.flushLoop(gctx) })
	err := g.Wait()

	final, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StoreTimeout)
	defer cancel()
	s.flush(final, time.Now())
	if ferr := s.conn.NC.FlushWithContext(final); ferr != nil {
		s.log.Debug("final nats flush", "err", ferr)
	}
	s.rec.Flush(final)

	s.log.Info("aggregator stopped", "received", s.received.Load(), "err", err)
	return err
}

// Stats returns the counters since New.
func (s *Service) Stats() Stats {
	return Stats{
		Received: s.received.Load(), Applied: s.applied.Load(),
		Dropped: s.dropped.Load(), Rejected: s.rejected.Load(),
		Flushes: s.flushes.Load(), PublishFailed: s.publishFailed.Load(),
		StoreFailed: s.storeFailed.Load(),
	}
}

// Snapshots returns copies of the latest snapshots, sorted by service and
// op. An empty filter returns all; a filter without a dot matches one
// service; a filter with a dot matches the snapshots whose "service.op"
// starts with it. It is safe for concurrent use.
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

// clone copies snap so that the caller cannot change the figures held.
func clone(snap events.Snapshot) events.Snapshot {
	if snap.Cache != nil {
		c := *snap.Cache
		snap.Cache = &c
	}
	if snap.Resource != nil {
		r := *snap.Resource
		snap.Resource = &r
	}
	return snap
}

func (s *Service) storeName() string {
	if s.store == nil {
		return "none"
	}
	return s.store.Name()
}

// consume pulls telemetry until ctx is cancelled, then drains the buffer.
func (s *Service) consume(ctx context.Context) error {
	cons, err := s.conn.Consumer(ctx, events.StreamTelemetry, jetstream.ConsumerConfig{
		Durable:        s.cfg.Durable,
		FilterSubjects: []string{events.TimingAll, events.ResourceAll},
		MaxAckPending:  s.cfg.MaxAckPending,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(min(pullBatch, s.cfg.MaxAckPending)))
	if err != nil {
		return fmt.Errorf("consume %s: %w", s.cfg.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()

	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			it.Stop()
			return fmt.Errorf("consume %s: %w", s.cfg.Durable, err)
		}
		s.handle(msg)
	}
}

// handle applies one message and acknowledges it, whatever its fate:
// telemetry that cannot be used is counted, not redelivered.
func (s *Service) handle(msg jetstream.Msg) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("telemetry handler panicked", "subject", msg.Subject(), "panic", r)
			_ = msg.Nak()
		}
	}()

	s.received.Add(1)
	out, err := s.apply(msg, time.Now())
	switch {
	case err != nil:
		s.reject(msg.Subject(), err)
	case out == dropped:
		s.dropped.Add(1)
	default:
		s.applied.Add(1)
	}
	if err := msg.Ack(); err != nil {
		s.log.Debug("ack telemetry", "subject", msg.Subject(), "err", err)
	}
}

// apply decodes msg by its subject and records it.
func (s *Service) apply(msg jetstream.Msg, now time.Time) (outcome, error) {
	subject := msg.Subject()
	switch {
	case strings.HasPrefix(subject, events.TimingPrefix):
		var ev events.Timing
		if err := events.Unmarshal(msg.Data(), &ev); err != nil {
			return 0, err
		}
		if err := validTiming(&ev); err != nil {
			return 0, err
		}
		ev.Time = eventTime(ev.Time, msg, now)
		return s.groups.recordTiming(&ev, now), nil

	case strings.HasPrefix(subject, events.ResourcePrefix):
		var ev events.Resource
		if err := events.Unmarshal(msg.Data(), &ev); err != nil {
			return 0, err
		}
		if err := validResource(&ev); err != nil {
			return 0, err
		}
		ev.Time = eventTime(ev.Time, msg, now)
		return s.groups.recordResource(&ev, now), nil
	}
	return 0, fmt.Errorf("%w: subject %s is not telemetry", events.ErrInvalid, subject)
}

// eventTime is t, or when the producer left it out, the time the stream
// stored the message.
func eventTime(t time.Time, msg jetstream.Msg, now time.Time) time.Time {
	if !t.IsZero() {
		return t
	}
	if md, err := msg.Metadata(); err == nil {
		return md.Timestamp
	}
	return now
}

func validTiming(ev *events.Timing) error {
	switch {
	case ev.Service == "" || ev.Op == "":
		return fmt.Errorf("%w: timing without service or op", events.ErrInvalid)
	case ev.Duration < 0:
		return fmt.Errorf("%w: timing %s.%s has negative duration %s",
			events.ErrInvalid, ev.Service, ev.Op, ev.Duration)
	}
	return nil
}

func validResource(ev *events.Resource) error {
	if ev.Host == "" || ev.Service == "" {
		return fmt.Errorf("%w: resource reading without host or service", events.ErrInvalid)
	}
	for _, v := range []float64{ev.CPUPercent, ev.HostCPUPercent, ev.HostMemUsedPerc} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: resource reading %s.%s has percentage %v",
				events.ErrInvalid, ev.Host, ev.Service, v)
		}
	}
	return nil
}

// reject counts a message that cannot be used: Debug each time, Warn now
// and then with the total.
func (s *Service) reject(subject string, err error) {
	n := s.rejected.Add(1)
	s.log.Debug("telemetry rejected", "subject", subject, "err", err)
	if s.warnReject.allow() {
		s.log.Warn("rejecting bad telemetry, check its producers",
			"subject", subject, "rejected_total", n, "err", err)
	}
}

// flushLoop flushes on every wall-clock multiple of the publish interval.
func (s *Service) flushLoop(ctx context.Context) error {
	for {
		next := time.Now().Truncate(s.cfg.PublishInterval).Add(s.cfg.PublishInterval)
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		s.flush(ctx, next)
	}
}

// flush publishes the snapshot of every group for the window ending at
// the tick at, then writes them all to the store in one batch.
func (s *Service) flush(ctx context.Context, at time.Time) {
	start := time.Now()
	snaps := s.groups.snapshots(at, start.Add(-s.cfg.IdleExpiry))
	entries := s.publish(snaps)
	err := s.write(ctx, entries)
	s.setLatest(snaps)
	s.flushes.Add(1)

	d := s.rec.Since("flush", start, err)
	if d > s.cfg.PublishInterval && s.warnSlow.allow() {
		s.log.Warn("flush took longer than the publish interval, widen it or cut groups",
			"took", d, "interval", s.cfg.PublishInterval, "groups", len(snaps))
	}
}

// publish sends each snapshot on core NATS and returns the store entries
// holding the same bytes.
func (s *Service) publish(snaps []events.Snapshot) []cache.Entry {
	entries := make([]cache.Entry, 0, len(snaps))
	for i := range snaps {
		snap := &snaps[i]
		msg, err := bus.Message(events.SnapshotSubject(snap.Service, snap.Op), snap, "")
		if err == nil {
			err = s.conn.NC.PublishMsg(msg)
		}
		if err != nil {
			n := s.publishFailed.Add(1)
			if s.warnPublish.allow() {
				s.log.Warn("snapshot not published, nats may be reconnecting",
					"op", snap.Op, "failed_total", n, "err", err)
			}
			continue
		}
		entries = append(entries, cache.Entry{
			Key:   cache.SnapshotKey(snap.Service, snap.Op),
			Value: msg.Data,
			TTL:   s.cfg.SnapshotTTL,
		})
	}
	return entries
}

// write stores entries with one SetMany.
func (s *Service) write(ctx context.Context, entries []cache.Entry) error {
	if s.store == nil || len(entries) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	if err := s.store.SetMany(ctx, entries); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil // shutting down; the final flush writes again
		}
		n := s.storeFailed.Add(1)
		if s.warnStore.allow() {
			s.log.Warn("snapshots not stored, publishing on nats only until the store is back",
				"store", s.store.Name(), "failed_total", n, "err", err)
		}
		return fmt.Errorf("store snapshots: %w", err)
	}
	return nil
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
