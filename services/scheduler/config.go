package scheduler

import (
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults of Config's fields.
const (
	DefaultDurable          = "scheduler"
	DefaultPendingBucket    = "perfpipe_scheduler_pending"
	DefaultRecurringBucket  = "perfpipe_recurring"
	DefaultMaxAckPending    = 4096
	DefaultMaxInFlight      = 256
	DefaultInFlightTimeout  = 2 * time.Minute
	DefaultAgingInterval    = 10 * time.Second
	DefaultReservedPriority = 7
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

	// RecurringBucket is the JetStream key-value bucket that holds the
	// recurring work definitions and their last fired ticks; instances
	// sharing it fire each tick once. Zero means "perfpipe_recurring".
	RecurringBucket string

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

	// ReservedInFlight is the part of MaxInFlight, in items, that only
	// items of priority ReservedPriority or higher may use: other items
	// hold at most MaxInFlight-ReservedInFlight credits, so a high-priority
	// item starts at once while fewer than ReservedInFlight high-priority
	// items are in flight, however many low-priority ones are. It must be
	// less than MaxInFlight and needs a limit. Zero means none reserved.
	ReservedInFlight int

	// ReservedPriority is the lowest priority, 1 to 9, that may use the
	// reserved credit. It is the request's own priority: aging reorders
	// waiting items but does not open the reserve to them. Zero means 7.
	ReservedPriority int
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	if c.PendingBucket == "" {
		c.PendingBucket = DefaultPendingBucket
	}
	if c.RecurringBucket == "" {
		c.RecurringBucket = DefaultRecurringBucket
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
	if c.ReservedPriority == 0 {
		c.ReservedPriority = DefaultReservedPriority
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
	case !validName(c.RecurringBucket):
		return fmt.Errorf("scheduler config: recurring bucket %q: want letters, digits, - or _",
			c.RecurringBucket)
	case c.MaxAckPending < 0:
		return fmt.Errorf("scheduler config: max ack pending %d is negative", c.MaxAckPending)
	case c.InFlightTimeout < 0:
		return fmt.Errorf("scheduler config: in-flight timeout %s is negative",
			c.InFlightTimeout)
	case c.ReservedPriority < 1 || c.ReservedPriority > events.MaxPriority:
		return fmt.Errorf("scheduler config: reserved priority %d: want 1 to %d "+
			"(zero means %d)", c.ReservedPriority, events.MaxPriority, DefaultReservedPriority)
	}
	return c.validateReserve()
}

// validateReserve checks ReservedInFlight against MaxInFlight, on c with
// defaults applied.
func (c Config) validateReserve() error {
	switch {
	case c.ReservedInFlight == 0:
		return nil
	case c.ReservedInFlight < 0:
		return fmt.Errorf("scheduler config: reserved in-flight %d is negative",
			c.ReservedInFlight)
	case c.MaxInFlight < 0:
		return fmt.Errorf("scheduler config: reserved in-flight %d needs a max in-flight limit",
			c.ReservedInFlight)
	case c.ReservedInFlight >= c.MaxInFlight:
		return fmt.Errorf("scheduler config: reserved in-flight %d: want less than "+
			"max in-flight %d", c.ReservedInFlight, c.MaxInFlight)
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
