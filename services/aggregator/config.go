package aggregator

import (
	"errors"
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults applied to a zero Config field.
const (
	DefaultDurable         = "aggregator"
	DefaultWindow          = time.Minute
	DefaultResolution      = time.Second
	DefaultMaxFuture       = 5 * time.Second
	DefaultPublishInterval = time.Second
	DefaultSnapshotTTL     = 5 * time.Minute
	DefaultIdleExpiry      = 10 * time.Minute
	DefaultStoreTimeout    = 2 * time.Second
	DefaultMaxAckPending   = 10_000
)

// maxBuckets bounds the memory of one group's window.
const maxBuckets = 10_000

// Config configures the aggregator. The zero value is ready to use.
type Config struct {
	// Durable names the pull consumer on the telemetry stream; a restarted
	// aggregator resumes where it stopped. Empty means "aggregator".
	Durable string

	// Window is how far back a snapshot looks: it covers the complete
	// buckets of the last Window before the publish tick. It must be a
	// multiple of Resolution. Zero means 1 minute.
	Window time.Duration

	// Resolution is the width of one bucket; buckets start at wall-clock
	// multiples of it. Zero means 1 s.
	Resolution time.Duration

	// MaxFuture is how far past the local clock an event's time may lie
	// before the event is dropped, to absorb clock skew between hosts.
	// Zero means 5 s.
	MaxFuture time.Duration

	// PublishInterval is the time between snapshot flushes, on wall-clock
	// multiples of it. Zero means 1 s.
	PublishInterval time.Duration

	// SnapshotTTL is how long a snapshot written to the store lives.
	// Zero means 5 minutes.
	SnapshotTTL time.Duration

	// IdleExpiry removes a group that received no sample for this long:
	// it stops being published and its stored snapshot expires.
	// Zero means 10 minutes.
	IdleExpiry time.Duration

	// StoreTimeout bounds one batch write of snapshots to the store.
	// Zero means 2 s.
	StoreTimeout time.Duration

	// MaxAckPending bounds events delivered but not yet acknowledged.
	// Zero means 10,000.
	MaxAckPending int
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	def(&c.Window, DefaultWindow)
	def(&c.Resolution, DefaultResolution)
	def(&c.MaxFuture, DefaultMaxFuture)
	def(&c.PublishInterval, DefaultPublishInterval)
	def(&c.SnapshotTTL, DefaultSnapshotTTL)
	def(&c.IdleExpiry, DefaultIdleExpiry)
	def(&c.StoreTimeout, DefaultStoreTimeout)
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	return c
}

// Validate checks c after defaults are applied: no negative durations, a
// window made of whole buckets and not too many of them, and a durable
// name that NATS accepts.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"window", c.Window}, {"resolution", c.Resolution},
		{"max future", c.MaxFuture}, {"publish interval", c.PublishInterval},
		{"snapshot ttl", c.SnapshotTTL}, {"idle expiry", c.IdleExpiry},
		{"store timeout", c.StoreTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, d.v))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("aggregator config: %w", errors.Join(errs...))
	}

	switch {
	case c.Window%c.Resolution != 0:
		errs = append(errs, fmt.Errorf("window %s is not a multiple of resolution %s",
			c.Window, c.Resolution))
	case c.Window/c.Resolution > maxBuckets:
		errs = append(errs, fmt.Errorf("window %s over resolution %s makes more than %d buckets",
			c.Window, c.Resolution, maxBuckets))
	}
	if c.MaxAckPending < 0 {
		errs = append(errs, fmt.Errorf("max ack pending %d is negative", c.MaxAckPending))
	}
	if !events.ValidToken(c.Durable) {
		errs = append(errs, fmt.Errorf("durable %q is not a valid consumer name", c.Durable))
	}
	if len(errs) > 0 {
		return fmt.Errorf("aggregator config: %w", errors.Join(errs...))
	}
	return nil
}
