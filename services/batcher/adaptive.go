package batcher

import (
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults of AdaptiveConfig fields left zero.
const (
	DefaultTargetP95        = 100 * time.Millisecond
	DefaultAdaptiveMinCount = 1
	DefaultAdaptiveMaxCount = 512
	DefaultAdaptiveWindow   = 20
)

// Tuning of the controller's steps; see Controller.
const (
	// deadBand is the relative distance from the target within which the
	// count stays as it is.
	deadBand = 0.05
	// gain scales a window's relative gap below the target into a
	// relative growth.
	gain = 0.5
	// maxGrow and maxShrink bound one step.
	maxGrow, maxShrink = 1.25, 0.5
)

// maxTracked bounds the batches and the items whose results the feedback
// waits for; the oldest batch is forgotten beyond it.
const maxTracked = 1 << 16

// AdaptiveConfig turns on the adaptive mode: each kind's MaxCount is set
// by a Controller from the measured latency of its batches, between
// MinCount and MaxCount. MaxBytes and Linger still come from the fixed
// limits.
type AdaptiveConfig struct {
	// TargetP95 is the 95th percentile of batch latency to keep to: from
	// a batch's first item starting on the agent to its last item
	// finishing. Zero means 100 ms.
	TargetP95 time.Duration
	// MinCount is the smallest MaxCount the controller sets, in items.
	// Zero means 1.
	MinCount int
	// MaxCount is the largest MaxCount the controller sets, in items. It
	// must not pass Config.MaxAckPending. Zero means 512.
	MaxCount int
	// Window is how many batches of a kind are measured between two
	// adjustments of its count. Zero means 20.
	Window int
}

// withDefaults returns a with every zero field set to its default.
func (a AdaptiveConfig) withDefaults() AdaptiveConfig {
	if a.TargetP95 == 0 {
		a.TargetP95 = DefaultTargetP95
	}
	if a.MinCount == 0 {
		a.MinCount = DefaultAdaptiveMinCount
	}
	if a.MaxCount == 0 {
		a.MaxCount = DefaultAdaptiveMaxCount
	}
	if a.Window == 0 {
		a.Window = DefaultAdaptiveWindow
	}
	return a
}

// Validate reports the first field out of range; zero fields are valid.
func (a AdaptiveConfig) Validate() error {
	a = a.withDefaults()
	switch {
	case a.TargetP95 < 0:
		return fmt.Errorf("adaptive: negative target p95 %s", a.TargetP95)
	case a.MinCount < 0 || a.MaxCount < a.MinCount:
		return fmt.Errorf("adaptive: count bounds %d-%d out of order", a.MinCount, a.MaxCount)
	case a.Window < 0:
		return fmt.Errorf("adaptive: negative window %d", a.Window)
	}
	return nil
}

// Sample is the measured latency of one batch.
type Sample struct {
	// Limit is the MaxCount the batch was built with.
	Limit int
	// Items is how many items it held.
	Items int
	// Latency is from its first item starting to its last finishing.
	Latency time.Duration
}

// Controller is a Policy that sets each kind's MaxCount so that the p95 of
// its batch latency stays near AdaptiveConfig.TargetP95, and otherwise
// makes batches as large as that allows, since larger batches spread the
// per-batch cost over more items.
//
// Every Window batches of a kind it takes the window's p95 and compares it
// with the target. Within 5% of it, the count holds. Above it, the count
// is cut in proportion, target/p95, by half at most: a batch's cost has a
// fixed part, so this lands a little below the target, never above. Below
// it, the count grows by half the relative gap, by a quarter at most, so
// it creeps up to the target without overshooting and flapping. The count
// only grows when at least half of the window's batches were full: a batch
// closed by its linger says nothing about a larger limit. Samples from
// batches built with another limit than the current one are dropped, so
// one adjustment is judged on its own batches.
//
// A window does not have to be complete to shrink the count: once enough
// of its batches are over the target that its p95 will be over whatever
// the rest measure (2 of 20), the count is cut at once, by the smallest of
// those latencies, a lower bound of the window's p95. The cut is the one
// the complete window would make, or milder, only sooner: when the cost
// of items jumps, the count follows within a few slow batches instead of
// a window of them.
//
// Limits and Observe may be called from different goroutines.
type Controller struct {
	cfg  AdaptiveConfig
	base Policy
	log  *slog.Logger

	mu    sync.Mutex
	kinds map[string]*gauge
}

// gauge is one kind's controller state.
type gauge struct {
	count  float64
	window quantile.Summary
	full   int
	// over holds the latencies of the window above the target's band.
	over []time.Duration
}

// NewController returns a controller that starts each kind at base's
// MaxCount, held within cfg's bounds, and takes MaxBytes and Linger from
// base. A nil log discards the adjustments' Debug records.
func NewController(cfg AdaptiveConfig, base Policy, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{
		cfg:   cfg.withDefaults(),
		base:  base,
		log:   log,
		kinds: make(map[string]*gauge),
	}
}

// Limits implements Policy.
func (c *Controller) Limits(kind string) Limits {
	l := c.base.Limits(kind)
	c.mu.Lock()
	defer c.mu.Unlock()
	l.MaxCount = c.gauge(kind, l.MaxCount).limit()
	return l
}

// Count returns the MaxCount the controller sets for kind now.
func (c *Controller) Count(kind string) int { return c.Limits(kind).MaxCount }

// Observe feeds the latency of one batch of kind to the controller.
func (c *Controller) Observe(kind string, s Sample) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.gauge(kind, c.base.Limits(kind).MaxCount)
	if s.Limit != g.limit() {
		return
	}

	_ = g.window.Add(s.Latency.Seconds())
	if s.Items >= s.Limit {
		g.full++
	}
	p95, ok := g.p95(c.cfg, s.Latency)
	if !ok {
		return
	}
	from := g.limit()
	g.step(c.cfg, p95)
	if to := g.limit(); to != from {
		c.log.Debug("batch count adjusted", "kind", kind, "from", from, "to", to,
			"p95", p95, "target", c.cfg.TargetP95)
	}
}

// gauge returns kind's state, starting it at count. Call with mu held.
func (c *Controller) gauge(kind string, count int) *gauge {
	g := c.kinds[kind]
	if g == nil {
		g = &gauge{count: float64(max(c.cfg.MinCount, min(count, c.cfg.MaxCount)))}
		c.kinds[kind] = g
	}
	return g
}

// p95 adds latency d to the window's tally and returns the window's p95
// once it is complete, or a lower bound of it as soon as enough batches
// are over the target's band that the complete window's p95 would be too
// (see Controller). ok is false while neither is known.
func (g *gauge) p95(cfg AdaptiveConfig, d time.Duration) (p95 time.Duration, ok bool) {
	if float64(d) > float64(cfg.TargetP95)*(1+deadBand) {
		g.over = append(g.over, d)
	}
	if len(g.over) >= overAllowed(cfg.Window)+1 {
		return slices.Min(g.over), true
	}
	if g.window.Count() < int64(cfg.Window) {
		return 0, false
	}
	return time.Duration(g.window.Quantile(0.95) * float64(time.Second)), true
}

// overAllowed is how many of n samples may exceed a value while the
// nearest-rank p95 of the n stays at or below it.
func overAllowed(n int) int { return n - int(math.Ceil(0.95*float64(n))) }

// limit is the count rounded to whole items.
func (g *gauge) limit() int { return int(math.Round(g.count)) }

// step adjusts the count from the window's p95 and starts a new window.
func (g *gauge) step(cfg AdaptiveConfig, p95 time.Duration) {
	full := 2*g.full >= int(g.window.Count())
	g.window.Reset()
	g.full = 0
	g.over = g.over[:0]

	ratio := float64(cfg.TargetP95) / float64(max(p95, time.Microsecond))
	if math.Abs(1-1/ratio) <= deadBand || (ratio > 1 && !full) {
		return
	}
	factor := min(maxGrow, 1+gain*(ratio-1))
	if ratio < 1 {
		factor = max(maxShrink, ratio)
	}
	next := g.count * factor
	if factor > 1 && math.Round(next) == math.Round(g.count) {
		next = math.Round(g.count) + 1 // a small count still moves
	}
	g.count = min(float64(cfg.MaxCount), max(float64(cfg.MinCount), next))
}

// feedback turns the results on work.result.> into batch samples for a
// Controller. A result names its request, not its batch, so feedback
// keeps the IDs of the items in each batch it was told of, and when the
// last result of a batch is in, observes the batch's latency: from the
// earliest Started to the latest Finished of its results. Both times come
// from the agent that ran the batch, so clocks of different hosts do not
// mix; time waiting in the BATCHES stream is left out on purpose, because
// it grows with load, not with this batch's size, and shrinking batches
// to answer it would lower capacity and lengthen the queue further.
//
// A batch whose results do not all come back (an agent died, a result was
// missed) is never observed; it is forgotten when maxTracked batches or
// items are newer.
type feedback struct {
	ctrl *Controller

	mu    sync.Mutex
	items map[string]*flight
	order []*flight // oldest first, done ones included until they reach the front
}

// flight is a published batch waiting for its results.
type flight struct {
	kind        string
	limit, size int
	ids         []string
	pending     int
	first, last time.Time
	done        bool
}

func newFeedback(ctrl *Controller) *feedback {
	return &feedback{ctrl: ctrl, items: make(map[string]*flight)}
}

// listen subscribes the feedback, if any, to every result on core NATS
// (results are stream messages, but a plain subscriber sees them too) and
// returns the function that ends the subscription.
func (s *Service) listen() (stop func(), err error) {
	if s.fb == nil {
		return func() {}, nil
	}
	sub, err := s.conn.NC.Subscribe(events.ResultAll, func(msg *nats.Msg) {
		var res events.Result
		if err := events.Unmarshal(msg.Data, &res); err != nil {
			s.log.Debug("result not read for feedback", "subject", msg.Subject, "err", err)
			return
		}
		s.fb.result(&res)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", events.ResultAll, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// track starts waiting for the results of p's items and returns what
// cancel takes. A nil feedback tracks nothing.
func (f *feedback) track(p *Pending) *flight {
	if f == nil {
		return nil
	}
	fl := &flight{kind: p.Kind, limit: p.Limits.MaxCount, size: len(p.Items)}
	for _, it := range p.Items {
		if it.Req.ID != "" {
			fl.ids = append(fl.ids, it.Req.ID)
		}
	}
	if len(fl.ids) == 0 {
		return nil
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range fl.ids {
		if old := f.items[id]; old != nil {
			old.pending-- // the item was batched again; the old batch never completes
		}
		f.items[id] = fl
	}
	fl.pending = len(fl.ids)
	f.order = append(f.order, fl)
	f.trim()
	return fl
}

// cancel stops waiting for fl, a batch that was not published.
func (f *feedback) cancel(fl *flight) {
	if f == nil || fl == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forget(fl)
	f.trim()
}

// result counts res towards its batch and observes the batch when it was
// the last result missing. It reports whether res belonged to a tracked
// batch.
func (f *feedback) result(res *events.Result) bool {
	f.mu.Lock()
	fl := f.items[res.ID]
	if fl == nil {
		f.mu.Unlock()
		return false
	}
	delete(f.items, res.ID)
	fl.add(res)
	complete := fl.pending == 0 && !fl.done
	if complete {
		fl.done = true
	}
	f.trim()
	f.mu.Unlock()

	if complete {
		f.ctrl.Observe(fl.kind, Sample{
			Limit: fl.limit, Items: fl.size, Latency: fl.last.Sub(fl.first),
		})
	}
	return true
}

// add widens the batch's span to res's. A result without a start (a dead
// result) spans only its finish.
func (fl *flight) add(res *events.Result) {
	fl.pending--
	start := res.Started
	if start.IsZero() {
		start = res.Finished
	}
	if fl.first.IsZero() || start.Before(fl.first) {
		fl.first = start
	}
	if res.Finished.After(fl.last) {
		fl.last = res.Finished
	}
}

// trim drops done batches from the front, then the oldest batches while
// more than maxTracked batches or items are kept. Call with mu held.
func (f *feedback) trim() {
	for len(f.order) > 0 {
		fl := f.order[0]
		if !fl.done && len(f.order) <= maxTracked && len(f.items) <= maxTracked {
			return
		}
		f.forget(fl)
		f.order[0] = nil
		f.order = f.order[1:]
	}
}

// forget removes fl's items that still point at it.
func (f *feedback) forget(fl *flight) {
	fl.done = true
	for _, id := range fl.ids {
		if f.items[id] == fl {
			delete(f.items, id)
		}
	}
}

// pending is how many items feedback waits for.
func (f *feedback) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.items)
}
