package scheduler

import (
	"fmt"
	"time"
)

// Defaults of Config's fields.
const (
	DefaultDurable         = "scheduler"
	DefaultPendingBucket   = "perfpipe_scheduler_pending"
	DefaultMaxAckPending   = 4096
	DefaultMaxInFlight     = 256
	DefaultInFlightTimeout = 2 * time.Minute
	DefaultAgingInterval   = 10 * time.Second
)

// Config configures a Service. The zero value is ready to use: every field
// left zero takes the default named in its comment.
type Config struct {
	// Durable is the name of the durable pull consumer on PERFPIPE_WORK.
	// Instances with the same name share the submissions. Zero means
	// "scheduler".
	Durable string

	// PendingBucket is the JetStream key-value bucket that keeps accepted
	// items until they are released. Zero means
	// "perfpipe_scheduler_pending".
	PendingBucket string

	// MaxAckPending bounds the WORK messages delivered to this consumer
	// and not yet acknowledged. Zero means 4096.
	MaxAckPending int

	// MaxInFlight bounds the released items that have no result yet. When
	// it is reached, due items wait, highest priority first. Zero means
	// 256; a negative value means no limit (priorities then only order
	// items that fall due together).
	MaxInFlight int

	// InFlightTimeout is how long a released item counts against
	// MaxInFlight without a result, so that lost results cannot leak
	// credit. Zero means 2 minutes.
	InFlightTimeout time.Duration

	// AgingInterval is the wait that raises a due item's priority by one.
	// Zero means 10 s; a negative value turns aging off.
	AgingInterval time.Duration
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	if c.PendingBucket == "" {
		c.PendingBucket = DefaultPendingBucket
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.InFlightTimeout == 0 {
		c.InFlightTimeout = DefaultInFlightTimeout
	}
	if c.AgingInterval == 0 {
		c.AgingInterval = DefaultAgingInterval
	}
	return c
}

// Validate reports the first field that holds a value the service cannot
// use. Zero fields are valid: they take their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case !validName(c.Durable):
		return fmt.Errorf("scheduler config: durable %q: want letters, digits, - or _",
			c.Durable)
	case !validName(c.PendingBucket):
		return fmt.Errorf("scheduler config: pending bucket %q: want letters, digits, - or _",
			c.PendingBucket)
	case c.MaxAckPending < 0:
		return fmt.Errorf("scheduler config: max ack pending %d is negative", c.MaxAckPending)
	case c.InFlightTimeout < 0:
		return fmt.Errorf("scheduler config: in-flight timeout %s is negative",
			c.InFlightTimeout)
	}
	return nil
}

// validName reports whether s is a usable consumer or bucket name.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r == '-' || r == '_',
			r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		default:
			return false
		}
	}
	return true
}
