package timing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults of Options.
const (
	DefaultFlushInterval = 250 * time.Millisecond
	DefaultMaxPending    = 16
)

const (
	// minFlushTimeout bounds one periodic flush, or the interval does when
	// it is longer.
	minFlushTimeout = 2 * time.Second
	// finalFlushTimeout bounds the flush Run makes after its context ends.
	finalFlushTimeout = 2 * time.Second
	// warnEvery is the shortest time between two warnings about batches
	// that could not be published.
	warnEvery = 30 * time.Second
	// envelope is the room kept in a message for the batch's own fields
	// and headers around its deltas.
	envelope = 1 << 10
	// deltaOverhead is the room one delta takes beside its strings and
	// summary bytes.
	deltaOverhead = 32
)

// Options tune a Recorder. The zero value gives the defaults.
type Options struct {
	// FlushInterval is how often samples are published. Flushes are
	// aligned to wall-clock multiples of it: 250 ms gives batches for
	// [x.000, x.250), [x.250, x.500) and so on. Choose a divisor of the
	// aggregator's bucket size. Zero means DefaultFlushInterval (250 ms);
	// negative is an error.
	FlushInterval time.Duration
	// Host names the machine in every batch. Empty means os.Hostname().
	Host string
	// Instance names this process in every batch and message ID. It must
	// be unique per process start, or the stream would take a new batch
	// for a resend of an old one and drop it. Empty means a new NUID.
	Instance string
	// MaxPending is how many batches are kept for a retry while publishing
	// fails; beyond it the oldest is dropped and counted in Stats.Dropped.
	// It also bounds the finished intervals waiting for a flush when
	// nothing flushes. Zero means DefaultMaxPending (16); negative is an
	// error.
	MaxPending int
	// Logger receives a warning when batches cannot be published, at most
	// every 30 s. Nil means slog.Default().
	Logger *slog.Logger
}

func (o Options) validate() error {
	switch {
	case o.FlushInterval < 0:
		return fmt.Errorf("flush interval %s is negative", o.FlushInterval)
	case o.MaxPending < 0:
		return fmt.Errorf("max pending %d is negative", o.MaxPending)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	if o.Instance == "" {
		o.Instance = nuid.Next()
	}
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Stats are a recorder's counts since New.
type Stats struct {
	// Recorded counts the samples folded into summaries.
	Recorded int64
	// Rejected counts the samples refused: negative, NaN or infinite.
	Rejected int64
	// Published counts the batches the stream acknowledged.
	Published int64
	// Failures counts failed publish attempts: a batch that got through
	// at the third attempt counts two.
	Failures int64
	// Dropped counts the batches given up beyond MaxPending, and the
	// finished intervals given up before they became batches because
	// nothing flushed them.
	Dropped int64
	// Pending is the number of batches waiting for a retry now.
	Pending int
}

// Recorder summarises the timings of one service and publishes them in
// batches. Make it with New; its methods are safe for concurrent use.
//
// NOTE: each distinct (op, status) pair of an interval holds a summary,
// up to about 40 KiB, until the interval is flushed; op and status should
// come from a bounded set, not from request data.
type Recorder struct {
	js         jetstream.JetStream
	service    string
	host       string
	instance   string
	subject    string
	every      int64 // FlushInterval in nanoseconds
	maxPending int
	log        *slog.Logger
	fakeClock  func() int64 // Unix nanoseconds, for tests

	mu       sync.Mutex // guards the record path: the fields up to flushMu
	anchor   time.Time  // a wall-clock reading with its monotonic reading
	wall     int64      // anchor in Unix nanoseconds
	open     *interval
	closed   []*interval
	spare    map[key]*quantile.Summary
	recorded int64

	flushMu sync.Mutex // serialises flushes: guards seq and pending
	seq     uint64
	pending []*nats.Msg

	// Owned by Run.
	lastWarn   time.Time
	suppressed int

	rejected, published, failures, dropped, pendingN atomic.Int64
}

// key names the summary a sample belongs to.
type key struct{ op, status string }

// interval holds the summaries of the samples recorded within
// [start, end), in Unix nanoseconds.
type interval struct {
	start, end int64
	n          int64 // samples
	sums       map[key]*quantile.Summary
}

// New returns a recorder that publishes the timings of service through
// js, on events.BatchTimingSubject(service). Zero fields of opts take
// their defaults. Call Run to publish periodically.
func New(js jetstream.JetStream, service string, opts Options) (*Recorder, error) {
	switch {
	case js == nil:
		return nil, errors.New("new timing recorder: nil jetstream")
	case service == "":
		return nil, errors.New("new timing recorder: empty service name")
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("new timing recorder %s: %w", service, err)
	}
	opts = opts.withDefaults()

	r := &Recorder{
		js:         js,
		service:    service,
		host:       opts.Host,
		instance:   opts.Instance,
		subject:    events.BatchTimingSubject(service),
		every:      int64(opts.FlushInterval),
		maxPending: opts.MaxPending,
		log:        opts.Logger,
		open:       &interval{sums: make(map[key]*quantile.Summary)},
	}
	r.reanchor()
	return r, nil
}

// now returns the wall clock in Unix nanoseconds at half the cost of
// time.Now: the anchor's wall time plus the monotonic time since it,
// which is one clock read. Every flush renews the anchor, so a step of
// the wall clock takes effect within an interval. The caller holds mu.
func (r *Recorder) now() int64 {
	if r.fakeClock != nil {
		return r.fakeClock()
	}
	return r.wall + int64(time.Since(r.anchor))
}

// reanchor reads the wall clock afresh. The caller holds mu.
func (r *Recorder) reanchor() {
	r.anchor = time.Now()
	r.wall = r.anchor.UnixNano()
}

// Millis converts d to the milliseconds that summaries hold, exactly as
// Record does: float64(d) / 1e6.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Record adds a sample of d to the summary of (op, status). A negative d
// is rejected and counted in Stats.Rejected.
func (r *Recorder) Record(op, status string, d time.Duration) {
	if d < 0 {
		r.rejected.Add(1)
		return
	}
	r.add(op, status, Millis(d))
}

// Since records the time from start to now for op, with status "error"
// when err is not nil and "ok" otherwise, and returns that time.
func (r *Recorder) Since(op string, start time.Time, err error) time.Duration {
	d := time.Since(start)
	status := events.TimingOK
	if err != nil {
		status = events.TimingError
	}
	r.Record(op, status, d)
	return d
}

// Observe adds a sample of ms milliseconds to the summary of (op,
// status). Negative, NaN and infinite values are rejected and counted in
// Stats.Rejected.
func (r *Recorder) Observe(op, status string, ms float64) {
	if !(ms >= 0) || math.IsInf(ms, 1) {
		r.rejected.Add(1)
		return
	}
	r.add(op, status, ms)
}

// add folds a valid sample into the open interval.
func (r *Recorder) add(op, status string, ms float64) {
	k := key{op, status}
	r.mu.Lock()
	defer r.mu.Unlock()

	iv := r.current(r.now())
	s := iv.sums[k]
	if s == nil {
		s = new(quantile.Summary)
		iv.sums[k] = s
	}
	_ = s.Add(ms) // finite: the callers checked
	iv.n++
	r.recorded++
}

// current returns the interval for a sample at now: the open one, or a
// new aligned one when now lies outside it. The caller holds mu.
func (r *Recorder) current(now int64) *interval {
	if iv := r.open; now >= iv.start && now < iv.end {
		return iv
	}
	start := floor(now, r.every)
	r.reopen(start, start+r.every)
	return r.open
}

// reopen makes [start, end) the open interval. The one open so far is
// queued for the next flush, unless it holds no samples; beyond
// maxPending queued intervals the oldest is dropped. The caller holds mu.
func (r *Recorder) reopen(start, end int64) {
	if r.open.n == 0 {
		r.open.start, r.open.end = start, end
		return
	}
	if len(r.closed) >= r.maxPending {
		r.closed = slices.Delete(r.closed, 0, 1)
		r.dropped.Add(1)
	}
	r.closed = append(r.closed, r.open)

	sums := r.spare
	r.spare = nil
	if sums == nil {
		sums = make(map[key]*quantile.Summary, len(r.open.sums))
	}
	r.open = &interval{start: start, end: end, sums: sums}
}

// cut ends the open interval at now, so that a flush takes its samples
// at once; the rest of the aligned interval stays open. The caller holds
// mu.
func (r *Recorder) cut(now int64) {
	iv := r.current(now)
	if iv.n == 0 {
		return
	}
	// Samples were read at or before now: End is exclusive.
	end := iv.end
	iv.end = now + 1
	r.reopen(now+1, end)
}

// take closes the open interval when it has ended, or at once when cut
// is set, and returns the closed intervals.
func (r *Recorder) take(cut bool) []*interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reanchor()
	now := r.now()
	if cut {
		r.cut(now)
	} else {
		r.current(now)
	}
	closed := r.closed
	r.closed = nil
	return closed
}

// floor is the multiple of every at or before t.
func floor(t, every int64) int64 {
	m := t % every
	if m < 0 {
		m += every
	}
	return t - m
}

// Flush closes the open interval early and publishes every batch not yet
// published, oldest first. It returns the first publish error; that batch
// and the ones after it stay for the next flush. Without a deadline on
// ctx, each publish waits at most JetStream's default timeout.
func (r *Recorder) Flush(ctx context.Context) error {
	return r.flush(ctx, true)
}

func (r *Recorder) flush(ctx context.Context, cut bool) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	var errs []error
	for _, iv := range r.take(cut) {
		if err := r.enqueue(iv); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.publishPending(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// enqueue turns iv into batch messages at the end of the pending queue,
// more than one when its summaries exceed a message, and keeps its map
// for a later interval. The caller holds flushMu.
func (r *Recorder) enqueue(iv *interval) error {
	ds, err := deltas(iv)
	r.recycle(iv)
	if err != nil {
		r.dropped.Add(1)
		return err
	}
	for _, part := range split(ds, r.maxBatchBytes()) {
		if err := r.push(iv, part); err != nil {
			return err
		}
	}
	return nil
}

// deltas encodes the summaries of iv that hold samples, sorted by op and
// status.
func deltas(iv *interval) ([]events.TimingDelta, error) {
	out := make([]events.TimingDelta, 0, len(iv.sums))
	for k, s := range iv.sums {
		if s.Count() == 0 {
			continue
		}
		b, err := s.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("encode summary %s %s: %w", k.op, k.status, err)
		}
		out = append(out, events.TimingDelta{Op: k.op, Status: k.status, Summary: b})
	}
	slices.SortFunc(out, func(a, b events.TimingDelta) int {
		return cmp.Or(strings.Compare(a.Op, b.Op), strings.Compare(a.Status, b.Status))
	})
	return out, nil
}

// recycle empties the summaries of iv and offers its map to the next
// interval. Pairs without samples in iv are forgotten, so a pair idle for
// a whole interval costs nothing.
func (r *Recorder) recycle(iv *interval) {
	for k, s := range iv.sums {
		if s.Count() == 0 {
			delete(iv.sums, k)
			continue
		}
		s.Reset()
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spare == nil {
		r.spare = iv.sums
	}
}

// maxBatchBytes is the room for deltas in one message.
func (r *Recorder) maxBatchBytes() int {
	limit := int64(1 << 20) // the NATS default
	if nc := r.js.Conn(); nc != nil && nc.MaxPayload() > 0 {
		limit = nc.MaxPayload()
	}
	return int(limit) - envelope
}

// split groups ds into parts of at most limit bytes each; a delta larger
// than limit goes alone.
func split(ds []events.TimingDelta, limit int) [][]events.TimingDelta {
	var parts [][]events.TimingDelta
	start, size := 0, 0
	for i, d := range ds {
		n := len(d.Op) + len(d.Status) + len(d.Summary) + deltaOverhead
		if i > start && size+n > limit {
			parts = append(parts, ds[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(ds) {
		parts = append(parts, ds[start:])
	}
	return parts
}

// push builds the next batch of iv with ds and queues it, dropping the
// oldest pending batch beyond maxPending. The caller holds flushMu.
func (r *Recorder) push(iv *interval, ds []events.TimingDelta) error {
	r.seq++
	b := &events.TimingBatch{
		Service:  r.service,
		Host:     r.host,
		Instance: r.instance,
		Seq:      r.seq,
		Start:    time.Unix(0, iv.start).UTC(),
		End:      time.Unix(0, iv.end).UTC(),
		Deltas:   ds,
	}
	msg, err := bus.Message(r.subject, b, r.instance+"."+strconv.FormatUint(r.seq, 10))
	if err != nil {
		r.dropped.Add(1)
		return fmt.Errorf("encode batch %s %d: %w", r.subject, r.seq, err)
	}

	if len(r.pending) >= r.maxPending {
		r.pending = slices.Delete(r.pending, 0, 1)
		r.dropped.Add(1)
	}
	r.pending = append(r.pending, msg)
	r.pendingN.Store(int64(len(r.pending)))
	return nil
}

// publishPending publishes the pending batches oldest first and stops at
// the first failure. The caller holds flushMu.
func (r *Recorder) publishPending(ctx context.Context) error {
	for len(r.pending) > 0 {
		msg := r.pending[0]
		if _, err := r.js.PublishMsg(ctx, msg); err != nil {
			r.failures.Add(1)
			return fmt.Errorf("publish %s %s: %w",
				r.subject, msg.Header.Get(jetstream.MsgIDHeader), err)
		}
		r.pending = slices.Delete(r.pending, 0, 1)
		r.pendingN.Store(int64(len(r.pending)))
		r.published.Add(1)
	}
	return nil
}

// Run flushes at every wall-clock multiple of FlushInterval until ctx
// ends, then flushes once more, for at most 2 s, and returns nil. Batches
// that fail to publish are retried at the next flush; Run warns about
// them at most every 30 s.
//
// NOTE: run one Run per Recorder; Flush may be called beside it.
func (r *Recorder) Run(ctx context.Context) error {
	timer := time.NewTimer(r.untilNext())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			r.finalFlush(ctx)
			return nil
		case <-timer.C:
			r.tick(ctx)
			timer.Reset(r.untilNext())
		}
	}
}

// untilNext is the time to the next multiple of the interval.
func (r *Recorder) untilNext() time.Duration {
	now := time.Now().UnixNano()
	return time.Duration(floor(now, r.every) + r.every - now)
}

// tick publishes the intervals that have ended.
func (r *Recorder) tick(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, max(time.Duration(r.every), minFlushTimeout))
	defer cancel()
	err := r.flush(tctx, false)
	if err == nil || ctx.Err() != nil {
		return
	}

	now := time.Now()
	if !r.lastWarn.IsZero() && now.Sub(r.lastWarn) < warnEvery {
		r.suppressed++
		return
	}
	st := r.Stats()
	r.log.Warn("timing batches not published, retrying at the next flush",
		"subject", r.subject, "pending", st.Pending, "dropped_total", st.Dropped,
		"suppressed", r.suppressed, "err", err)
	r.lastWarn, r.suppressed = now, 0
}

// finalFlush publishes what is left after Run's context ended.
func (r *Recorder) finalFlush(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
	defer cancel()
	if err := r.Flush(fctx); err != nil {
		r.log.Warn("last timing flush failed, batches kept for Flush",
			"subject", r.subject, "pending", r.pendingN.Load(), "err", err)
	}
}

// Stats returns the counts so far.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	recorded := r.recorded
	r.mu.Unlock()
	return Stats{
		Recorded:  recorded,
		Rejected:  r.rejected.Load(),
		Published: r.published.Load(),
		Failures:  r.failures.Load(),
		Dropped:   r.dropped.Load(),
		Pending:   int(r.pendingN.Load()),
	}
}
