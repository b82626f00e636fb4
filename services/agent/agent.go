package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// serviceName is how the agent names itself in timings and dead letters.
const serviceName = "agent"

// Service runs batches of work items. Make one with New and call Run once.
type Service struct {
	conn    *bus.Conn
	store   cache.Store
	reg     *Registry
	cfg     Config
	log     *slog.Logger
	timings *timing.Recorder
	name    string

	// slots holds one token per busy worker.
	slots chan struct{}
	// limits caps the running items of each capped kind.
	limits kindLimits
	// bytes caps the payload bytes of running items; nil for no cap.
	bytes *semaphore.Weighted
	// parked holds one token per batch whose items wait for their kind.
	parked chan struct{}
	// adm holds intake while the host is loaded.
	adm *admission
	// flight collapses concurrent runs of the same cache key.
	flight singleflight.Group

	// handedBack and nakkedItems count the items handed back in remainder
	// batches, and those in batches nak'ed whole.
	handedBack  atomic.Int64
	nakkedItems atomic.Int64

	cacheErrors atomic.Int64
	cacheWarn   rate.Sometimes
	pullWarn    rate.Sometimes
}

// New returns an agent that runs the kinds of reg. store may be nil: the
// agent then runs without a result cache.
func New(
	conn *bus.Conn, store cache.Store, reg *Registry, cfg Config, log *slog.Logger,
) (*Service, error) {
	if conn == nil || reg == nil {
		return nil, errors.New("agent: nil connection or registry")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", serviceName)

	name := cfg.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	timings, err := timing.New(conn.JS, serviceName, timing.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	s := &Service{
		conn:      conn,
		store:     store,
		reg:       reg,
		cfg:       cfg,
		log:       log,
		timings:   timings,
		name:      name,
		slots:     make(chan struct{}, cfg.Workers),
		parked:    make(chan struct{}, cfg.Workers),
		adm:       newAdmission(cfg.Admission, log),
		cacheWarn: rate.Sometimes{Interval: 30 * time.Second},
		pullWarn:  rate.Sometimes{Interval: 30 * time.Second},
	}
	if cfg.MaxInFlightBytes > 0 {
		s.bytes = semaphore.NewWeighted(cfg.MaxInFlightBytes)
	}
	s.adm.record = func(state string, d time.Duration) {
		s.timings.Record("admission", state, d)
	}
	return s, nil
}

// Throttled reports whether the agent holds intake because its host is
// loaded (see AdmissionConfig).
func (s *Service) Throttled() bool { return s.adm.Throttled() }

// Run pulls and runs batches until ctx is cancelled. It then stops
// pulling, lets in-flight items finish within Config.DrainTimeout, then
// stops the rest and hands them back for another agent in a batch of their
// own, so that the items that did finish are not run again. It returns
// nil then, or an error only when it cannot start consuming.
func (s *Service) Run(ctx context.Context) error {
	cons, err := s.conn.Consumer(ctx, events.StreamBatches, jetstream.ConsumerConfig{
		Durable:       s.cfg.Durable,
		FilterSubject: events.BatchAll,
		AckWait:       s.durableAckWait(ctx),
		MaxAckPending: s.cfg.MaxAckPending,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("agent: %w", err)
	}
	if !s.cfg.Admission.Disabled {
		sub, err := s.adm.subscribe(s.conn.NC)
		if err != nil {
			return fmt.Errorf("agent: subscribe %s: %w", events.ResourceAll, err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	s.log.Info("agent running", "agent", s.name, "durable", s.cfg.Durable,
		"workers", s.cfg.Workers, "kinds", s.reg.Kinds(), "cache", s.storeName(),
		"max_in_flight_bytes", s.cfg.MaxInFlightBytes, "admission_host", s.admissionHost())

	// Items run under work, which outlives ctx by up to the drain time,
	// so that they can finish and publish their results.
	work, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var g errgroup.Group
	g.Go(func() error { return s.timings.Run(ctx) })
	g.Go(func() error {
		s.consume(ctx, work, cons, &g)
		return nil
	})
	<-ctx.Done()
	s.drain(&g, stop)

	// Items that finished in the drain were timed after the recorder's
	// own last flush.
	flushCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.timings.Flush(flushCtx); err != nil {
		s.log.Warn("timings not published at stop", "err", err)
	}
	s.log.Info("agent stopped")
	return nil
}

// durableAckWait is the ack wait to give the durable: Config.AckWait.
// The agents of one durable share its ack wait, so the agent started last
// sets it for all; that is safe for the batches the others are running,
// since every agent reports progress at least every progressEvery,
// shorter than the shortest ack wait an agent accepts.
func (s *Service) durableAckWait(ctx context.Context) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := s.conn.JS.Consumer(ctx, events.StreamBatches, s.cfg.Durable)
	if err == nil {
		if have := cons.CachedInfo().Config.AckWait; have != s.cfg.AckWait {
			s.log.Info("durable ack wait changed for every agent on it",
				"durable", s.cfg.Durable, "from", have, "to", s.cfg.AckWait)
		}
	}
	// Usually not found: the durable is new. Otherwise creating it will
	// fail and say why.
	return s.cfg.AckWait
}

// progressEvery is how often a running batch reports progress: a third of
// the ack wait, and at most progressMax, so that another agent that sets
// a shorter ack wait on the durable (down to minAckWait) does not get the
// batch redelivered.
func (s *Service) progressEvery() time.Duration {
	return min(s.cfg.AckWait/3, progressMax)
}

func (s *Service) admissionHost() string {
	if s.cfg.Admission.Disabled {
		return "off"
	}
	return s.cfg.Admission.Host
}

func (s *Service) storeName() string {
	if s.store == nil {
		return "none"
	}
	return s.store.Name()
}

// consume pulls one batch whenever intake is open and a worker is free,
// and starts its items on g, until ctx is cancelled. From then on no item
// starts; the items running go on under work.
func (s *Service) consume(ctx, work context.Context, cons jetstream.Consumer, g *errgroup.Group) {
	for s.ready(ctx) {
		msg, err := s.next(ctx, cons)
		if msg == nil {
			if err != nil {
				s.pullWarn.Do(func() { s.log.Warn("pull failed, retrying", "err", err) })
				sleep(ctx, time.Second)
			}
			continue
		}
		s.startBatch(ctx, work, g, msg)
	}
}

// ready waits until intake is open and a worker is free. The worker is
// not taken: the batch's items take workers as they start.
func (s *Service) ready(ctx context.Context) bool {
	if !s.adm.wait(ctx) || !s.acquire(ctx) {
		return false
	}
	s.release()
	return true
}

// next waits up to PollWait for a batch. It returns nil and no error
// when none came, ctx was cancelled or intake was throttled meanwhile.
func (s *Service) next(ctx context.Context, cons jetstream.Consumer) (jetstream.Msg, error) {
	pollCtx, cancel := context.WithTimeout(ctx, s.cfg.PollWait)
	defer cancel()
	defer s.adm.watchPull(cancel)()
	if pollCtx.Err() != nil {
		// Throttled since ready: a pull sent now could take a batch that
		// nobody reads until the ack wait runs out.
		return nil, nil
	}
	msg, err := cons.Next(jetstream.FetchContext(pollCtx))
	switch {
	case err == nil:
		return msg, nil
	case errors.Is(err, nats.ErrTimeout), pollCtx.Err() != nil:
		return nil, nil
	}
	return nil, err
}

// acquire takes a worker slot, waiting until one is free or ctx ends.
func (s *Service) acquire(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case s.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Service) release() { <-s.slots }

// startBatch decodes msg and starts its items (see startItems).
func (s *Service) startBatch(ctx, work context.Context, g *errgroup.Group, msg jetstream.Msg) {
	var batch events.Batch
	if err := events.Unmarshal(msg.Data(), &batch); err != nil {
		s.rejectBatch(work, msg, err)
		return
	}
	b := newBatchRun(msg, &batch)
	s.log.Debug("batch received", "batch_id", batch.ID, "kind", b.kind,
		"items", len(batch.Items))
	g.Go(func() error {
		s.watch(ctx, b)
		return nil
	})
	s.startItems(ctx, work, g, b, 0, false)
}

// rejectBatch dead-letters a batch message that cannot be read and
// terminates it; if the dead letter fails, the batch comes back later.
func (s *Service) rejectBatch(ctx context.Context, msg jetstream.Msg, err error) {
	dl := &events.DeadLetter{
		Kind:    events.LastToken(msg.Subject()),
		Subject: msg.Subject(),
		Service: serviceName,
		Reason:  events.Reason(err),
		Error:   err.Error(),
		Data:    msg.Data(),
	}
	if dlErr := s.conn.DeadLetter(ctx, dl); dlErr != nil {
		s.log.Warn("dead letter failed, batch will be redelivered",
			"subject", msg.Subject(), "err", dlErr)
		_ = msg.NakWithDelay(redeliveryDelay)
		return
	}
	_ = msg.Term()
}

// safeRunItem runs one item and turns a panic outside the handler into an
// unfinished item, so that the item is handed back and the agent goes on.
func (s *Service) safeRunItem(
	ctx context.Context, b *batchRun, req *events.WorkRequest,
) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("item panicked", "batch_id", b.batch.ID, "id", req.ID, "panic", p)
			ok = false
		}
	}()
	return s.runItem(ctx, b, req)
}

// watch keeps a running batch from being redelivered, and settles it once
// every item has finished or been given up on.
func (s *Service) watch(ctx context.Context, b *batchRun) {
	tick := time.NewTicker(s.progressEvery())
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if err := b.msg.InProgress(); err != nil {
				s.log.Debug("batch progress not sent", "batch_id", b.batch.ID, "err", err)
			}
		case <-b.done:
			s.settle(ctx, b)
			return
		}
	}
}

// settle acks a batch whose items all finished, hands back the unfinished
// items of one that finished some (see handBack), naks one that finished
// none, and records the batch's time. ctx is Run's: once it is cancelled,
// the agent is shutting down.
func (s *Service) settle(ctx context.Context, b *batchRun) {
	var err error
	status := events.TimingError
	switch rest := b.unfinished(); {
	case len(rest) == 0:
		// Confirmed, so that a lost ack cannot run the batch again.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		err = b.msg.DoubleAck(actx)
		cancel()
		status = events.TimingOK
	case len(rest) < len(b.batch.Items):
		err = s.handBack(ctx, b, rest)
	default:
		// The remainder would be the batch itself.
		err = s.nak(ctx, b)
	}
	s.timings.Record("batch", status, time.Since(b.start))
	s.log.Debug("batch done", "batch_id", b.batch.ID, "kind", b.kind,
		"items", len(b.batch.Items), "status", status)
	if err != nil {
		s.log.Warn("batch ack failed, it will be redelivered", "batch_id", b.batch.ID,
			"err", err)
	}
}

// drain waits for the goroutines of g, and stops the items still running
// DrainTimeout after Run's context was cancelled. The stopped items, and
// those that had not started, are handed back as remainder batches by
// settle, or their whole batches nak'ed when that fails.
func (s *Service) drain(g *errgroup.Group, stop context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		_ = g.Wait()
		close(done)
	}()

	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	handed, nakked := s.handedBack.Load(), s.nakkedItems.Load()
	s.log.Warn("drain timed out, stopping in-flight items to hand them back",
		"drain_timeout", s.cfg.DrainTimeout, "busy_workers", len(s.slots))
	stop()
	<-done
	s.log.Info("drain stopped unfinished items", "handed_back",
		s.handedBack.Load()-handed, "nakked_items", s.nakkedItems.Load()-nakked)
}

// batchRun tracks the items of one batch until all have finished or been
// given up on.
type batchRun struct {
	msg   jetstream.Msg
	batch *events.Batch
	kind  string
	start time.Time

	// finished[i] is set once item i needs no further run: its result
	// published, its retry submitted or its dead letter recorded.
	finished  []atomic.Bool
	remaining atomic.Int64
	done      chan struct{}
}

func newBatchRun(msg jetstream.Msg, batch *events.Batch) *batchRun {
	b := &batchRun{
		msg:      msg,
		batch:    batch,
		kind:     batch.Kind,
		start:    time.Now(),
		finished: make([]atomic.Bool, len(batch.Items)),
		done:     make(chan struct{}),
	}
	if b.kind == "" {
		b.kind = events.LastToken(msg.Subject())
	}
	b.remaining.Store(int64(len(batch.Items)))
	if len(batch.Items) == 0 {
		close(b.done)
	}
	return b
}

// finish records that item i ended, finished (ok) or not.
func (b *batchRun) finish(i int, ok bool) {
	if ok {
		b.finished[i].Store(true)
	}
	if b.remaining.Add(-1) == 0 {
		close(b.done)
	}
}

// abandon records that the last n items will not run.
func (b *batchRun) abandon(n int) {
	if b.remaining.Add(-int64(n)) == 0 {
		close(b.done)
	}
}

// unfinished returns copies of the items that did not finish, in batch
// order. Call it only once done is closed.
func (b *batchRun) unfinished() []events.WorkRequest {
	var rest []events.WorkRequest
	for i := range b.batch.Items {
		if !b.finished[i].Load() {
			rest = append(rest, b.batch.Items[i])
		}
	}
	return rest
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
