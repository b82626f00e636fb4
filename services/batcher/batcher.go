package batcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// Service name and the operations it times.
const (
	serviceName = "batcher"
	// opBatch is from a batch's first item arriving to the batch being
	// published.
	opBatch = "batch"
	// opPublish is the publish of one batch to the stream.
	opPublish = "publish"
)

// envelope is the room kept in a NATS message for the batch's own fields
// and headers around its items.
const envelope = 1 << 10

// errOversized marks an item that cannot travel in any batch.
var errOversized = errors.New("item larger than the server's max payload")

// Stats are the service's counts since New.
type Stats struct {
	// Batches is how many batches were published.
	Batches int64
	// Items is how many items those batches held.
	Items int64
	// Dead is how many messages were dead-lettered.
	Dead int64
	// PublishErrors is how many batch publishes failed; their items were
	// negatively acknowledged and come back.
	PublishErrors int64
}

// Service consumes ready work items and publishes them in batches.
type Service struct {
	conn *bus.Conn
	cfg  Config
	log  *slog.Logger
	rec  *timing.Recorder
	// acc is owned by the goroutine running loop.
	acc *Accumulator
	// maxItem is the largest item that fits in a batch message.
	maxItem int
	// ctrl and fb are the adaptive mode's controller and its feedback
	// from results; nil in fixed mode.
	ctrl *Controller
	fb   *feedback

	batches, items, dead, failed atomic.Int64
}

// New checks cfg and returns a batcher that talks over conn. A nil log
// means slog.Default().
func New(conn *bus.Conn, cfg Config, log *slog.Logger) (*Service, error) {
	if conn == nil {
		return nil, errors.New("new batcher: nil connection")
	}
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}

	maxBatch := int(conn.NC.MaxPayload()) - envelope
	if err := checkMaxBytes(cfg, maxBatch); err != nil {
		return nil, err
	}
	log = log.With("service", serviceName)
	rec, err := timing.New(conn.JS, serviceName, timing.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("new batcher: %w", err)
	}
	s := &Service{conn: conn, cfg: cfg, log: log, rec: rec, maxItem: maxBatch}
	policy := cfg.policy()
	if cfg.Adaptive != nil {
		s.ctrl = NewController(*cfg.Adaptive, policy, log)
		s.fb = newFeedback(s.ctrl)
		policy = s.ctrl
	}
	s.acc = NewAccumulator(clamp{policy, maxBatch})
	return s, nil
}

// Controller returns the adaptive mode's controller, or nil in fixed
// mode.
func (s *Service) Controller() *Controller { return s.ctrl }

// Stats returns the counts so far. It is safe to call while Run runs.
func (s *Service) Stats() Stats {
	return Stats{
		Batches:       s.batches.Load(),
		Items:         s.items.Load(),
		Dead:          s.dead.Load(),
		PublishErrors: s.failed.Load(),
	}
}

// Run batches ready items until ctx ends. It then stops pulling, publishes
// the open batches within Config.ShutdownTimeout, and returns nil. It
// returns an error when the consumer cannot be created or goes away.
//
// NOTE: call Run once at a time; the service holds one set of open
// batches.
func (s *Service) Run(ctx context.Context) error {
	stopResults, err := s.listen()
	if err != nil {
		return err
	}
	defer stopResults()
	it, err := s.subscribe(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.log.Info("batcher started", "durable", s.cfg.Durable, "adaptive", s.ctrl != nil)

	// Timings flush until the pipeline has stopped, then once more.
	timings, stopTimings := context.WithCancel(context.WithoutCancel(ctx))
	var g errgroup.Group
	g.Go(func() error { return s.rec.Run(timings) })
	g.Go(func() error {
		defer stopTimings()
		return s.pipeline(ctx, it)
	})
	err = g.Wait()

	s.flushConn(ctx)
	st := s.Stats()
	s.log.Info("batcher stopped", "batches", st.Batches, "items", st.Items, "dead", st.Dead)
	return err
}

// pipeline pulls, batches and publishes until ctx ends, then publishes
// the open batches within Config.ShutdownTimeout.
func (s *Service) pipeline(ctx context.Context, it jetstream.MessagesContext) error {
	// Batches still publish after ctx ends, but only for the grace time.
	flushCtx, cancel := graceContext(ctx, s.cfg.ShutdownTimeout)
	defer cancel()

	in := make(chan jetstream.Msg)
	out := make(chan *Pending, s.cfg.Publishers)
	var g errgroup.Group
	g.Go(func() error { return s.pull(ctx, it, in) })
	g.Go(func() error { s.loop(flushCtx, in, out); return nil })
	for range s.cfg.Publishers {
		g.Go(func() error { s.publishAll(flushCtx, out); return nil })
	}
	return g.Wait()
}

// subscribe creates the durable consumer and starts pulling from it.
func (s *Service) subscribe(ctx context.Context) (jetstream.MessagesContext, error) {
	cons, err := s.conn.Consumer(ctx, events.StreamReady, jetstream.ConsumerConfig{
		Durable:       s.cfg.Durable,
		FilterSubject: events.ReadyAll,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       s.cfg.AckWait,
		MaxAckPending: s.cfg.MaxAckPending,
	})
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.PullBuffer))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", s.cfg.Durable, err)
	}
	return it, nil
}

// pull hands messages to in until ctx ends, then takes the messages the
// client already holds, which would otherwise wait out AckWait, and
// closes in.
func (s *Service) pull(ctx context.Context, it jetstream.MessagesContext,
	in chan<- jetstream.Msg,
) error {
	defer close(in)
	defer it.Stop()

	if err := s.forward(ctx, it, in); err != nil {
		return err
	}

	it.Drain()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout/2)
	defer cancel()
	_ = s.forward(dctx, it, in)
	return nil
}

// forward passes messages from it to in. It returns nil when ctx ends and
// an error when the iterator closes or the consumer is gone.
func (s *Service) forward(ctx context.Context, it jetstream.MessagesContext,
	in chan<- jetstream.Msg,
) error {
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		switch {
		case err == nil:
			in <- msg
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrMsgIteratorClosed),
			errors.Is(err, jetstream.ErrConsumerDeleted),
			errors.Is(err, jetstream.ErrBadRequest):
			return fmt.Errorf("pull %s: %w", s.cfg.Durable, err)
		default:
			s.log.Warn("pull error, still pulling", "durable", s.cfg.Durable, "err", err)
		}
	}
}

// loop owns the accumulator: it adds the messages from in, closes batches
// on their linger with one timer, and sends closed batches to out. When in
// closes it sends every open batch and closes out.
func (s *Service) loop(ctx context.Context, in <-chan jetstream.Msg, out chan<- *Pending) {
	defer close(out)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	for {
		select {
		case msg, ok := <-in:
			if !ok {
				send(out, s.acc.Drain())
				return
			}
			s.accept(ctx, msg, out)
		case <-timer.C:
			send(out, s.acc.Expire(time.Now()))
		}
		s.arm(timer)
	}
}

// arm sets timer to the earliest linger deadline of the open batches.
func (s *Service) arm(timer *time.Timer) {
	next, ok := s.acc.Next()
	if !ok {
		timer.Stop()
		return
	}
	timer.Reset(time.Until(next))
}

func send(out chan<- *Pending, ps []*Pending) {
	for _, p := range ps {
		out <- p
	}
}

// accept adds one message to its kind's batch, or dead-letters it.
func (s *Service) accept(ctx context.Context, msg jetstream.Msg, out chan<- *Pending) {
	defer s.recoverMsg(msg)

	it, err := s.item(msg)
	if err != nil {
		s.deadLetter(ctx, msg, it.Req, err)
		return
	}
	closed, err := s.acc.Add(it, time.Now())
	if err != nil {
		s.deadLetter(ctx, msg, it.Req, err)
		return
	}
	send(out, closed)
}

// item decodes and checks msg. On error the item's Req is set when the
// request could be decoded.
func (s *Service) item(msg jetstream.Msg) (Item, error) {
	req := new(events.WorkRequest)
	if err := events.Unmarshal(msg.Data(), req); err != nil {
		return Item{}, err
	}
	if req.Kind == "" {
		req.Kind = events.LastToken(msg.Subject())
	}
	if err := req.Validate(); err != nil {
		return Item{Req: req}, err
	}

	meta, err := msg.Metadata()
	if err != nil {
		return Item{Req: req}, fmt.Errorf("metadata %s: %w", msg.Subject(), err)
	}
	it, err := NewItem(req, meta.Sequence.Stream, time.Now())
	if err != nil {
		return Item{Req: req}, err
	}
	if it.Size > s.maxItem {
		return it, fmt.Errorf("%w: %d bytes at %s sequence %d, max %d",
			errOversized, it.Size, events.StreamReady, it.Seq, s.maxItem)
	}
	it.Msg = msg
	return it, nil
}

// deadLetter publishes msg to the dead-letter stream with the reason for
// cause and terminates it. If the dead letter cannot be published, msg is
// negatively acknowledged so that it comes back.
func (s *Service) deadLetter(ctx context.Context, msg jetstream.Msg,
	req *events.WorkRequest, cause error,
) {
	dl := &events.DeadLetter{
		Kind:    events.LastToken(msg.Subject()),
		Subject: msg.Subject(),
		Service: serviceName,
		Reason:  reason(cause),
		Error:   cause.Error(),
		Data:    msg.Data(),
	}
	if req != nil {
		dl.ID = req.ID
	}
	if meta, err := msg.Metadata(); err == nil {
		dl.Attempts = int(meta.NumDelivered)
	}
	if errors.Is(cause, errOversized) {
		// The data would not fit either; the error names its sequence.
		dl.Data = nil
	}

	if err := s.conn.DeadLetter(ctx, dl); err != nil {
		s.log.Error("dead letter not published, message redelivered",
			"subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(s.cfg.RetryDelay)
		return
	}
	if req != nil && req.ID != "" {
		// Whoever waits for the request hears why it will not run.
		res := events.DeadResult(req, dl.Reason, cause, time.Now())
		res.Kind = dl.Kind
		if err := s.conn.Publish(ctx, events.ResultSubject(dl.Kind), res,
			events.ResultMsgID(req)); err != nil {
			s.log.Warn("dead result not published", "id", req.ID, "err", err)
		}
	}
	s.dead.Add(1)
	if err := msg.TermWithReason(dl.Reason); err != nil {
		s.log.Warn("term after dead letter", "subject", msg.Subject(), "err", err)
	}
}

// reason is the short dead-letter reason for err.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrNoKind):
		return "invalid request"
	case errors.Is(err, errOversized):
		return "oversized"
	}
	r := events.Reason(err)
	if r == "undecodable" && !errors.Is(err, events.ErrDecode) {
		// Read but not batched, such as missing metadata.
		return "unbatchable"
	}
	return r
}

// recoverMsg turns a panic on msg into a redelivery.
func (s *Service) recoverMsg(msg jetstream.Msg) {
	if r := recover(); r != nil {
		s.log.Error("panic on message, redelivering", "subject", msg.Subject(), "panic", r)
		_ = msg.NakWithDelay(s.cfg.RetryDelay)
	}
}

// publishAll publishes the batches from out until it closes.
func (s *Service) publishAll(ctx context.Context, out <-chan *Pending) {
	for p := range out {
		s.flush(ctx, p)
	}
}

// flush publishes p and acknowledges its items, or gives them back.
func (s *Service) flush(ctx context.Context, p *Pending) {
	defer s.recoverBatch(p)

	b := p.Batch(time.Now())
	// Tracked first: a quick agent may answer before the publish returns.
	fl := s.fb.track(p)
	start := time.Now()
	err := s.conn.Publish(ctx, events.BatchSubject(p.Kind), b, b.ID)
	s.rec.Since(opPublish, start, err)
	s.rec.Since(opBatch, p.Opened, err)
	if err != nil {
		s.fb.cancel(fl)
		s.failed.Add(1)
		s.log.Warn("batch not published, items redelivered", "kind", p.Kind,
			"batch_id", b.ID, "items", len(p.Items), "retry_in", s.cfg.RetryDelay, "err", err)
		s.nakAll(p)
		return
	}

	s.ackAll(p)
	s.batches.Add(1)
	s.items.Add(int64(len(p.Items)))
	s.log.Debug("batch published", "kind", p.Kind, "batch_id", b.ID,
		"items", len(p.Items), "bytes", p.Bytes)
}

// ackAll acks p's items and waits for the server to confirm each, all at
// once: a lost ack would put the item in a second batch and run it twice.
func (s *Service) ackAll(p *Pending) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, it := range p.Items {
		if it.Msg == nil {
			continue
		}
		wg.Go(func() {
			if err := it.Msg.DoubleAck(ctx); err != nil {
				s.log.Warn("ack item", "kind", p.Kind, "seq", it.Seq, "err", err)
			}
		})
	}
	wg.Wait()
}

// nakAll gives p's items back to the stream after RetryDelay.
func (s *Service) nakAll(p *Pending) {
	for _, it := range p.Items {
		if it.Msg != nil {
			_ = it.Msg.NakWithDelay(s.cfg.RetryDelay)
		}
	}
}

// recoverBatch turns a panic while flushing p into a redelivery.
func (s *Service) recoverBatch(p *Pending) {
	if r := recover(); r != nil {
		s.log.Error("panic on batch, redelivering", "kind", p.Kind, "panic", r)
		s.nakAll(p)
	}
}

// flushConn pushes the last acks to the server.
func (s *Service) flushConn(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := s.conn.NC.FlushWithContext(fctx); err != nil {
		s.log.Warn("flush acks at stop", "err", err)
	}
}

// graceContext returns a context that ends grace after ctx does, or when
// its cancel is called.
func graceContext(ctx context.Context, grace time.Duration) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-gctx.Done():
		}
	})
	return gctx, func() {
		stop()
		cancel()
	}
}

// clamp caps a policy's MaxBytes at what one NATS message can carry.
type clamp struct {
	policy   Policy
	maxBytes int
}

func (c clamp) Limits(kind string) Limits {
	l := c.policy.Limits(kind).inherit(DefaultLimits())
	l.MaxBytes = min(l.MaxBytes, c.maxBytes)
	return l
}

// checkMaxBytes rejects configured limits that no NATS message can carry.
func checkMaxBytes(cfg Config, maxBatch int) error {
	static := cfg.static()
	if l := static.Default.inherit(DefaultLimits()); l.MaxBytes > maxBatch {
		return fmt.Errorf("new batcher: max bytes %d above the server's limit %d",
			l.MaxBytes, maxBatch)
	}
	for kind := range cfg.PerKind {
		if l := static.Limits(kind); l.MaxBytes > maxBatch {
			return fmt.Errorf("new batcher: max bytes %d of %s above the server's limit %d",
				l.MaxBytes, kind, maxBatch)
		}
	}
	return nil
}
