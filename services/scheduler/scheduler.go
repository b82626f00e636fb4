package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// Name is the service's name in timings, dead letters and logs.
const Name = "scheduler"

// Timing operations.
const (
	opAccept  = "accept"  // WORK message in, to durable and acked
	opRelease = "release" // acceptance to release: the scheduled wait
)

const (
	// msgTimeout bounds the work on one message or one release; it is
	// well under the consumer's 30 s ack wait.
	msgTimeout = 10 * time.Second
	// pullBatch is how many WORK messages one pull asks for.
	pullBatch = 256
	// retryDelay is how long a WORK message that could not be accepted
	// waits before it is delivered again.
	retryDelay = time.Second
	// minBackoff and maxBackoff bound the wait after a failed release.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// idleWait is the release loop's sleep with nothing scheduled; any
	// change wakes it sooner.
	idleWait = time.Hour
	// drainTimeout bounds the handling of pulled messages at shutdown.
	drainTimeout = 5 * time.Second
	// flushTimeout bounds the last flush of timings at shutdown.
	flushTimeout = 2 * time.Second
)

// errNilConn is returned by New without a connection.
var errNilConn = errors.New("scheduler: nil connection")

// Stats are the scheduler's counts, for health output.
type Stats struct {
	// Pending is the items accepted and not yet released.
	Pending int
	// Due is the part of Pending that is due and waits for credit.
	Due int
	// InFlight is the released items with no result yet.
	InFlight int
	// Accepted, Released and Dead count items since the service started;
	// Expired counts in-flight items dropped after InFlightTimeout.
	Accepted, Released, Dead, Expired int64
}

// flight is a released item that holds credit.
type flight struct {
	at  time.Time // when it was released
	low bool      // below ReservedPriority: it holds unreserved credit
}

// Service is the scheduler. Build it with New and run it with Run.
type Service struct {
	conn  *bus.Conn
	cfg   Config
	log   *slog.Logger
	rec   *timing.Recorder
	store *pendingStore // set by Run
	wake  chan struct{}
	// removals queues released items whose bucket entries are to go.
	removals chan *item

	mu       sync.Mutex
	q        *queue
	held     map[string]bool   // heldKey of the items in q
	inflight map[string]flight // released IDs holding credit
	backoff  time.Duration     // the release loop's, after a failure
	// lowInFlight counts the items in inflight below ReservedPriority.
	lowInFlight int

	accepted, released, dead, expired atomic.Int64
}

// New returns a scheduler that talks over conn. The configuration is
// checked here; the bucket and consumer are opened by Run.
func New(conn *bus.Conn, cfg Config, log *slog.Logger) (*Service, error) {
	if conn == nil {
		return nil, errNilConn
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", Name)
	rec, err := timing.New(conn.JS, Name, timing.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}

	return &Service{
		conn:     conn,
		cfg:      cfg,
		log:      log,
		rec:      rec,
		wake:     make(chan struct{}, 1),
		removals: make(chan *item, removeBacklog),
		q:        newQueue(cfg.AgingInterval),
		held:     make(map[string]bool),
		inflight: make(map[string]flight),
	}, nil
}

// Run opens the pending bucket, restores the items kept there, and then
// accepts and releases work until ctx ends. It returns nil after ctx ends
// and an error only when it cannot run. Items held in memory are in the
// bucket or not yet acknowledged, so stopping at any point loses none.
// Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	cons, stop, err := s.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer stop()

	s.log.Info("scheduler started", "durable", s.cfg.Durable,
		"bucket", s.cfg.PendingBucket, "pending", s.Stats().Pending)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.rec.Run(gctx) })
	g.Go(func() error { return s.consume(gctx, cons) })
	g.Go(func() error { return s.releaseLoop(gctx) })
	g.Go(func() error { return s.removeLoop(gctx) })
	g.Go(func() error { return s.runRecurring(gctx) })
	err = g.Wait()

	s.flush()
	st := s.Stats()
	s.log.Info("scheduler stopped", "pending", st.Pending, "released", st.Released)
	return err
}

// Stats returns the current counts. It is safe to call at any time.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	st := Stats{Pending: s.q.Len(), Due: s.q.readyLen(), InFlight: len(s.inflight)}
	s.mu.Unlock()
	st.Accepted = s.accepted.Load()
	st.Released = s.released.Load()
	st.Dead = s.dead.Load()
	st.Expired = s.expired.Load()
	return st
}

// start opens the bucket, listens for results, restores pending items and
// opens the consumer. stop ends the results subscription.
func (s *Service) start(ctx context.Context) (jetstream.Consumer, func(), error) {
	store, err := openPending(ctx, s.conn.JS, s.cfg.PendingBucket)
	if err != nil {
		return nil, nil, err
	}
	s.store = store

	sub, err := s.conn.NC.Subscribe(events.ResultAll, s.onResult)
	if err != nil {
		return nil, nil, fmt.Errorf("subscribe %s: %w", events.ResultAll, err)
	}
	stop := func() { _ = sub.Unsubscribe() }

	if err := s.restore(ctx); err != nil {
		stop()
		return nil, nil, err
	}

	cons, err := s.conn.Consumer(ctx, events.StreamWork, jetstream.ConsumerConfig{
		Durable:       s.cfg.Durable,
		FilterSubject: events.SubmitAll,
		MaxAckPending: s.cfg.MaxAckPending,
	})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return cons, stop, nil
}

// restore puts the items kept in the bucket back into the queue.
func (s *Service) restore(ctx context.Context) error {
	stored, err := s.store.items(ctx)
	if err != nil {
		return err
	}

	now := time.Now()
	restored := 0
	for _, e := range stored {
		var req events.WorkRequest
		if err := events.Unmarshal(e.data, &req); err != nil {
			s.dropStored(ctx, e, err)
			continue
		}
		it := newItem(req)
		it.key = e.key
		s.hold(it, now)
		restored++
	}
	if len(stored) > 0 {
		s.log.Info("pending items restored", "count", restored,
			"dropped", len(stored)-restored)
	}
	return nil
}

// dropStored dead-letters an entry of the bucket that cannot be read and
// removes it; when the dead letter fails it stays for the next start.
func (s *Service) dropStored(ctx context.Context, e storedItem, err error) {
	dl := &events.DeadLetter{
		Kind: "unknown", Subject: s.store.subject(e.key), Service: Name,
		Reason: events.Reason(err), Error: err.Error(), Data: e.data,
	}
	if err := s.conn.DeadLetter(ctx, dl); err != nil {
		s.log.Warn("unreadable pending item kept", "key", e.key, "err", err)
		return
	}
	s.dead.Add(1)
	if err := s.store.remove(ctx, e.key); err != nil {
		s.log.Warn("unreadable pending item not removed", "key", e.key, "err", err)
	}
}

// hold adds it to the queue unless an item with its ID and attempt is
// there already.
func (s *Service) hold(it *item, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := heldKey(&it.req)
	if s.held[key] {
		return
	}
	s.held[key] = true
	s.q.add(it, now)
}

// consume pulls WORK messages and handles them one at a time until ctx
// ends.
func (s *Service) consume(ctx context.Context, cons jetstream.Consumer) error {
	msgs, err := cons.Messages(jetstream.PullMaxMessages(pullBatch))
	if err != nil {
		return fmt.Errorf("consume %s: %w", s.cfg.Durable, err)
	}
	defer msgs.Stop()

	for {
		msg, err := msgs.Next(jetstream.NextContext(ctx))
		switch {
		case ctx.Err() != nil:
			s.drain(ctx, msgs)
			return nil
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return fmt.Errorf("consume %s: %w", s.cfg.Durable, err)
		case err != nil:
			s.log.Warn("pull failed, pulling again", "durable", s.cfg.Durable, "err", err)
			continue
		}
		s.handle(ctx, msg)
	}
}

// drain stops pulling and handles the messages already pulled, for at
// most drainTimeout, so that a graceful stop leaves none to wait out the
// ack wait.
func (s *Service) drain(ctx context.Context, msgs jetstream.MessagesContext) {
	msgs.Drain()
	deadline := time.Now().Add(drainTimeout)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return
		}
		msg, err := msgs.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			return
		}
		s.handle(ctx, msg)
	}
}

// onResult gives back the credit of a released item when its result
// arrives.
func (s *Service) onResult(m *nats.Msg) {
	var res events.Result
	if err := events.Unmarshal(m.Data, &res); err != nil {
		s.log.Debug("result not read", "subject", m.Subject, "err", err)
		return
	}

	s.mu.Lock()
	ok := s.land(res.ID)
	s.mu.Unlock()
	if ok {
		s.notify()
	}
}

// notify wakes the release loop.
func (s *Service) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// flush publishes the timings recorded while the consumer drained, after
// the recorder's own last flush.
func (s *Service) flush() {
	if s.conn.NC.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := s.rec.Flush(ctx); err != nil {
		s.log.Warn("timings not published at stop", "err", err)
	}
}
