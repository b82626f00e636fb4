package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// BreakerOptions tune a [Breaker]. The zero value gives the defaults.
type BreakerOptions struct {
	// Failures is how many failed calls in a row open the breaker. A
	// failure is an error or a timeout of the store; not a cancellation
	// by the caller, nor a Redis error reply to one command (WRONGTYPE).
	// Default 3; zero or less means the default.
	Failures int

	// CoolDown is how long the breaker stays open before it lets one
	// probe (a Ping) through. It doubles after each failed probe, up to
	// MaxCoolDown, and starts again from CoolDown once a probe succeeds.
	// Default 1 s; zero or less means the default.
	CoolDown time.Duration

	// MaxCoolDown caps the doubled cool-down. Default 30 s; zero or less
	// means the default; below CoolDown it is raised to CoolDown.
	MaxCoolDown time.Duration

	// ProbeTimeout bounds the probe's Ping, within the caller's own
	// deadline. Default 1 s; zero or less means the default.
	ProbeTimeout time.Duration

	// OnStateChange, when set, is called after each change of state, for
	// logging. It runs on the caller's goroutine with no lock held and
	// must return quickly.
	OnStateChange func(from, to BreakerState, err error)
}

// withDefaults fills the zero fields.
func (o BreakerOptions) withDefaults() BreakerOptions {
	if o.Failures <= 0 {
		o.Failures = 3
	}
	if o.CoolDown <= 0 {
		o.CoolDown = time.Second
	}
	if o.MaxCoolDown <= 0 {
		o.MaxCoolDown = 30 * time.Second
	}
	o.MaxCoolDown = max(o.MaxCoolDown, o.CoolDown)
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = time.Second
	}
	return o
}

// BreakerState is where a [Breaker] stands.
type BreakerState int

const (
	// BreakerClosed passes calls to the store.
	BreakerClosed BreakerState = iota
	// BreakerOpen fails calls with ErrUnavailable until the cool-down ends.
	BreakerOpen
	// BreakerProbing lets one Ping through; other calls fail fast.
	BreakerProbing
)

// String returns "closed", "open" or "probing".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerProbing:
		return "probing"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}

// BreakerStats are a [Breaker]'s state and counters since it was made,
// for health output.
type BreakerStats struct {
	State BreakerState
	// Opened counts the times the breaker opened from closed.
	Opened int64
	// ShortCircuited counts calls failed with ErrUnavailable without
	// asking the store.
	ShortCircuited int64
	// Probes and ProbeFailures count the Pings let through while open.
	Probes        int64
	ProbeFailures int64
	// CoolDown is the current wait before the next probe.
	CoolDown time.Duration
}

// Breaker is a Store that stops asking a failing store for a while, so
// that an unavailable cache costs callers nothing instead of a timeout
// per call, and lets it come back by itself.
//
// After Failures failed calls in a row it opens: every call returns
// ErrUnavailable at once. When the cool-down has passed, the next call
// first pings the store; a success closes the breaker and the call goes
// on, a failure doubles the cool-down and the call fails with
// ErrUnavailable. Close is always passed through.
//
// A Breaker is safe for concurrent use.
type Breaker struct {
	inner Store
	opts  BreakerOptions

	mu       sync.Mutex
	state    BreakerState
	failures int           // failed calls in a row while closed
	gen      uint64        // bumped on each change of state
	coolDown time.Duration // wait of the current or next opening
	probeAt  time.Time     // when open, the earliest probe
	stats    BreakerStats  // counters; State and CoolDown are filled on read
}

var _ Store = (*Breaker)(nil)

// NewBreaker wraps inner in a breaker tuned by opts.
func NewBreaker(inner Store, opts BreakerOptions) *Breaker {
	opts = opts.withDefaults()
	return &Breaker{inner: inner, opts: opts, coolDown: opts.CoolDown}
}

// State returns where the breaker stands now.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// Stats returns the state and counters.
func (b *Breaker) Stats() BreakerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	s.State, s.CoolDown = b.state, b.coolDown
	return s
}

// Inner returns the wrapped store.
func (b *Breaker) Inner() Store { return b.inner }

// Get implements Store.
func (b *Breaker) Get(ctx context.Context, key string) ([]byte, bool, error) {
	var (
		v  []byte
		ok bool
	)
	err := b.do(ctx, func(ctx context.Context) (err error) {
		v, ok, err = b.inner.Get(ctx, key)
		return err
	})
	return v, ok, err
}

// Set implements Store.
func (b *Breaker) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return b.do(ctx, func(ctx context.Context) error {
		return b.inner.Set(ctx, key, value, ttl)
	})
}

// SetMany implements Store.
func (b *Breaker) SetMany(ctx context.Context, entries []Entry) error {
	return b.do(ctx, func(ctx context.Context) error {
		return b.inner.SetMany(ctx, entries)
	})
}

// DeleteMatching implements Store.
func (b *Breaker) DeleteMatching(ctx context.Context, pattern string) (int, error) {
	var n int
	err := b.do(ctx, func(ctx context.Context) (err error) {
		n, err = b.inner.DeleteMatching(ctx, pattern)
		return err
	})
	return n, err
}

// Ping implements Store. While the breaker is open it fails fast, so that
// health checks see ErrUnavailable; once the cool-down has passed it is
// the probe itself.
func (b *Breaker) Ping(ctx context.Context) error {
	return b.do(ctx, b.inner.Ping)
}

// Name implements Store with the wrapped store's name.
func (b *Breaker) Name() string { return b.inner.Name() }

// Close implements Store by closing the wrapped store.
func (b *Breaker) Close() error { return b.inner.Close() }

// do runs call on the store when the breaker allows it, and records how
// it went.
func (b *Breaker) do(ctx context.Context, call func(context.Context) error) error {
	gen, err := b.admit(ctx)
	if err != nil {
		return err
	}

	err = call(ctx)
	b.record(ctx, gen, err)
	return err
}

// admit returns the generation a call runs in, or ErrUnavailable. When
// the cool-down is over, the caller becomes the probe.
func (b *Breaker) admit(ctx context.Context) (uint64, error) {
	b.mu.Lock()
	switch {
	case b.state == BreakerClosed:
		defer b.mu.Unlock()
		return b.gen, nil
	case b.state == BreakerOpen && !time.Now().Before(b.probeAt):
		b.setLocked(BreakerProbing)
		b.stats.Probes++
		b.mu.Unlock()
		b.changed(BreakerOpen, BreakerProbing, nil)
		return b.probe(ctx)
	}
	defer b.mu.Unlock()
	b.stats.ShortCircuited++
	return 0, ErrUnavailable
}

// probe pings the store and closes or reopens the breaker.
func (b *Breaker) probe(ctx context.Context) (uint64, error) {
	pctx, cancel := context.WithTimeout(ctx, b.opts.ProbeTimeout)
	err := b.inner.Ping(pctx)
	cancel()

	b.mu.Lock()
	to := BreakerClosed
	switch {
	case err == nil:
		b.coolDown = b.opts.CoolDown
		b.failures = 0
		b.setLocked(BreakerClosed)
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller gave up: no verdict, let the next call probe.
		to = BreakerOpen
		b.setLocked(BreakerOpen)
		b.probeAt = time.Now()
	default:
		to = BreakerOpen
		b.stats.ProbeFailures++
		b.coolDown = min(2*b.coolDown, b.opts.MaxCoolDown)
		b.openLocked()
	}
	gen := b.gen
	b.mu.Unlock()

	b.changed(BreakerProbing, to, err)
	if err != nil {
		return 0, fmt.Errorf("%w: %s ping: %w", ErrUnavailable, b.inner.Name(), err)
	}
	return gen, nil
}

// record counts the outcome of a call admitted in generation gen; calls
// that started before the last change of state count for nothing.
func (b *Breaker) record(ctx context.Context, gen uint64, err error) {
	failed := b.failed(ctx, err)
	b.mu.Lock()
	if gen != b.gen || b.state != BreakerClosed {
		b.mu.Unlock()
		return
	}
	if !failed {
		b.failures = 0
		b.mu.Unlock()
		return
	}
	b.failures++
	if b.failures < b.opts.Failures {
		b.mu.Unlock()
		return
	}
	b.stats.Opened++
	b.coolDown = b.opts.CoolDown
	b.openLocked()
	b.mu.Unlock()

	b.changed(BreakerClosed, BreakerOpen, err)
}

// failed says whether err tells that the store is unavailable. A
// cancellation by the caller does not; a store that knows its errors
// better (Redis: an error reply to one command) may say no as well.
func (b *Breaker) failed(ctx context.Context, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled) && errors.Is(ctx.Err(), context.Canceled):
		return false
	}
	if c, ok := b.inner.(outageClassifier); ok {
		return c.isOutage(err)
	}
	return true
}

// outageClassifier is a store that tells outages from other errors.
type outageClassifier interface {
	isOutage(err error) bool
}

// openLocked opens the breaker for the current cool-down.
func (b *Breaker) openLocked() {
	b.setLocked(BreakerOpen)
	b.failures = 0
	b.probeAt = time.Now().Add(b.coolDown)
}

// setLocked moves to state s in a new generation.
func (b *Breaker) setLocked(s BreakerState) {
	b.state = s
	b.gen++
}

// changed reports a change of state to OnStateChange.
func (b *Breaker) changed(from, to BreakerState, err error) {
	if b.opts.OnStateChange != nil && from != to {
		b.opts.OnStateChange(from, to, err)
	}
}
