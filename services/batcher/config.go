package batcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults of Config fields left zero.
const (
	DefaultDurable         = "batcher"
	DefaultMaxAckPending   = 8192
	DefaultAckWait         = 30 * time.Second
	DefaultPublishers      = 4
	DefaultRetryDelay      = 500 * time.Millisecond
	DefaultShutdownTimeout = 5 * time.Second
	DefaultPullBuffer      = 512
)

// Config configures the batcher. The zero value is usable: every field
// left zero takes the default named in its comment.
type Config struct {
	// Durable is the name of the durable consumer on PERFPIPE_READY.
	// Instances sharing it share the work. Zero means "batcher".
	Durable string

	// Default bounds every batch whose kind has no entry in PerKind.
	// Zero fields take DefaultMaxCount (32 items), DefaultMaxBytes
	// (256 KiB) and DefaultLinger (10 ms).
	Default Limits
	// PerKind overrides Default for some kinds, keyed by kind. Zero
	// fields of an entry inherit Default's. Nil means no overrides.
	PerKind map[string]Limits
	// Policy, when set, decides the limits of every kind instead of
	// Default and PerKind; zero fields of what it returns still take
	// DefaultLimits, and MaxBytes is capped at what one NATS message
	// holds. Nil means Static{Default, PerKind}.
	Policy Policy
	// Adaptive, when set, turns on the adaptive mode: a Controller sets
	// every kind's MaxCount from the measured latency of its batches,
	// starting from and taking MaxBytes and Linger from the policy above.
	// Nil means fixed mode.
	Adaptive *AdaptiveConfig

	// MaxAckPending caps the items delivered but not yet acknowledged:
	// everything in open batches and in batches being published. It must
	// be at least the largest MaxCount. Zero means 8192.
	MaxAckPending int
	// AckWait is how long the stream waits for an item's ack before it
	// redelivers the item. It must be longer than every Linger. Zero
	// means 30 s.
	AckWait time.Duration
	// PullBuffer is how many messages the client fetches ahead. Zero
	// means 512.
	PullBuffer int

	// Publishers is how many batches may be in flight to the stream at
	// once. Zero means 4.
	Publishers int
	// RetryDelay is how long an item waits before it is redelivered after
	// its batch failed to publish. Zero means 500 ms.
	RetryDelay time.Duration
	// ShutdownTimeout bounds the time Run takes, once its context ends, to
	// publish the open batches and acknowledge their items; a second more
	// may go to flushing the acks. Zero means 5 s.
	ShutdownTimeout time.Duration
}

// Validate reports the first field that is out of range. Zero fields are
// valid: they take their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !events.ValidToken(c.Durable) {
		return fmt.Errorf("batcher config: durable %q is not a subject token", c.Durable)
	}
	if err := c.Default.validate(); err != nil {
		return fmt.Errorf("batcher config: default limits: %w", err)
	}
	for kind, l := range c.PerKind {
		if !events.ValidToken(kind) {
			return fmt.Errorf("batcher config: per-kind key %q is not a subject token", kind)
		}
		if err := l.validate(); err != nil {
			return fmt.Errorf("batcher config: limits of %s: %w", kind, err)
		}
	}
	if c.Adaptive != nil {
		if err := c.Adaptive.Validate(); err != nil {
			return fmt.Errorf("batcher config: %w", err)
		}
	}
	return c.validateDelivery()
}

// validateDelivery checks the consumer settings against the static limits.
func (c Config) validateDelivery() error {
	static := c.static()
	maxCount, maxLinger := static.Default.MaxCount, static.Default.Linger
	for kind := range c.PerKind {
		l := static.Limits(kind)
		maxCount, maxLinger = max(maxCount, l.MaxCount), max(maxLinger, l.Linger)
	}
	if c.Adaptive != nil {
		maxCount = max(maxCount, c.Adaptive.MaxCount)
	}

	switch {
	case c.MaxAckPending < maxCount:
		return fmt.Errorf("batcher config: max ack pending %d below max count %d",
			c.MaxAckPending, maxCount)
	case c.AckWait <= maxLinger:
		return fmt.Errorf("batcher config: ack wait %s not longer than linger %s",
			c.AckWait, maxLinger)
	case c.PullBuffer < 0, c.Publishers < 0:
		return errors.New("batcher config: negative pull buffer or publishers")
	case c.RetryDelay < 0, c.ShutdownTimeout < 0:
		return errors.New("batcher config: negative retry delay or shutdown timeout")
	}
	return nil
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	c.Default = c.Default.inherit(DefaultLimits())
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.PullBuffer == 0 {
		c.PullBuffer = DefaultPullBuffer
	}
	if c.Publishers == 0 {
		c.Publishers = DefaultPublishers
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Adaptive != nil {
		a := c.Adaptive.withDefaults()
		c.Adaptive = &a
	}
	return c
}

// static is the policy made of Default and PerKind.
func (c Config) static() Static {
	return Static{Default: c.Default, PerKind: c.PerKind}
}

// policy is the policy the service asks: Policy when set, else static.
func (c Config) policy() Policy {
	if c.Policy != nil {
		return c.Policy
	}
	return c.static()
}
