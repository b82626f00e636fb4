package aggregator

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults applied to a zero Config field.
const (
	DefaultDurable            = "aggregator"
	DefaultResolution         = 10 * time.Second
	DefaultAllowedLateness    = 5 * time.Second
	DefaultMaxFuture          = 5 * time.Second
	DefaultPublishInterval    = time.Second
	DefaultCheckpointInterval = time.Second
	DefaultCheckpointBucket   = "perfpipe_aggregator"
	DefaultSnapshotTTL        = 5 * time.Minute
	DefaultIdleExpiry         = 10 * time.Minute
	DefaultMaxGroups          = 10_000
	DefaultStoreTimeout       = 2 * time.Second
	DefaultMaxAckPending      = 250_000
)

// DefaultWindows returns the windows used when Config.Windows is empty:
// final windows of a minute, and rollups of 5 and 15 minutes.
func DefaultWindows() []time.Duration {
	return []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}
}

// Limits that keep one group's state small.
const (
	maxBucketsPerWindow = 1000
	maxRollups          = 24 * 60
)

// Config configures the aggregator. The zero value is ready to use.
type Config struct {
	// Durable names the pull consumer on the telemetry stream and the
	// checkpoint object; with Partitions > 1 the partition is appended
	// ("aggregator-p0of2"), so that each partition has its own. Empty
	// means "aggregator".
	//
	// NOTE: run one instance per name at a time: an instance recreates
	// its consumer from its checkpoint when it starts.
	Durable string

	// Resolution is the width of a bucket. Buckets start at wall-clock
	// multiples of it, by event time. Zero means 10 s.
	Resolution time.Duration

	// Windows are the windows a snapshot covers, each a multiple of
	// Resolution. The smallest is the final window: aligned to multiples
	// of its size and published final once when it closes; partial
	// snapshots show it rolling with the clock. Every larger one must be
	// a multiple of the smallest: it is published as a rollup, the merge
	// of the group's last final windows. Empty means 1m, 5m and 15m.
	Windows []time.Duration

	// AllowedLateness is how long after its end a window still takes
	// samples, by the time the stream stored them. A window [s, e) is
	// final at e plus AllowedLateness; later samples for it are dropped
	// and counted as late. At most the smallest window. Zero means 5 s.
	AllowedLateness time.Duration

	// MaxFuture is how far past the time the stream stored it a sample's
	// time may lie, to absorb clock skew; later samples are dropped and
	// counted as future. Zero means 5 s.
	MaxFuture time.Duration

	// PublishInterval is the time between flushes, which publish partial
	// snapshots and the finals of closed windows, on wall-clock multiples
	// of it. Zero means 1 s.
	PublishInterval time.Duration

	// CheckpointInterval is the time between checkpoints of the group
	// state; events are acknowledged only once a checkpoint holds them.
	// Zero means 1 s.
	CheckpointInterval time.Duration

	// CheckpointBucket is the JetStream object store bucket that keeps
	// checkpoints. Empty means "perfpipe_aggregator".
	CheckpointBucket string

	// SnapshotTTL is how long a snapshot written to the store lives.
	// Zero means 5 minutes.
	SnapshotTTL time.Duration

	// IdleExpiry removes a group that received no sample for this long,
	// by stream time, once its windows are final. Zero means 10 minutes.
	IdleExpiry time.Duration

	// MaxGroups caps the groups kept, the overflow group included;
	// samples of further groups are added to the overflow group
	// ("_overflow", "_overflow"). At least 2. Zero means 10,000.
	MaxGroups int

	// Partitions is how many instances share the groups, and Partition
	// (0 to Partitions-1) which share this one keeps: the groups whose
	// hash of (service, op) modulo Partitions equals Partition. Zero
	// means 1 and 0: one instance keeps every group.
	Partitions int
	Partition  int

	// StoreTimeout bounds one batch write of snapshots to the store, and
	// the publication of final snapshots. Zero means 2 s.
	StoreTimeout time.Duration

	// MaxAckPending bounds events delivered but not acknowledged; since
	// acks wait for a checkpoint it should exceed the events of a few
	// checkpoint intervals. Zero means 250,000.
	MaxAckPending int
}

// withDefaults returns c with every zero field set to its default and the
// windows sorted in a copy.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	if c.CheckpointBucket == "" {
		c.CheckpointBucket = DefaultCheckpointBucket
	}
	c.Windows = slices.Sorted(slices.Values(c.Windows))
	if len(c.Windows) == 0 {
		c.Windows = DefaultWindows()
	}
	def(&c.Resolution, DefaultResolution)
	def(&c.AllowedLateness, DefaultAllowedLateness)
	def(&c.MaxFuture, DefaultMaxFuture)
	def(&c.PublishInterval, DefaultPublishInterval)
	def(&c.CheckpointInterval, DefaultCheckpointInterval)
	def(&c.SnapshotTTL, DefaultSnapshotTTL)
	def(&c.IdleExpiry, DefaultIdleExpiry)
	def(&c.StoreTimeout, DefaultStoreTimeout)
	defInt(&c.MaxGroups, DefaultMaxGroups)
	defInt(&c.Partitions, 1)
	defInt(&c.MaxAckPending, DefaultMaxAckPending)
	return c
}

// Validate checks c after defaults are applied.
func (c Config) Validate() error {
	c = c.withDefaults()
	errs := c.negatives()
	if len(errs) == 0 {
		errs = c.checkWindows()
	}
	errs = append(errs, c.checkLimits()...)
	if len(errs) > 0 {
		return fmt.Errorf("aggregator config: %w", errors.Join(errs...))
	}
	return nil
}

func (c Config) negatives() []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"resolution", c.Resolution}, {"allowed lateness", c.AllowedLateness},
		{"max future", c.MaxFuture}, {"publish interval", c.PublishInterval},
		{"checkpoint interval", c.CheckpointInterval}, {"snapshot ttl", c.SnapshotTTL},
		{"idle expiry", c.IdleExpiry}, {"store timeout", c.StoreTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, d.v))
		}
	}
	return errs
}

// checkWindows requires windows made of whole buckets, larger windows made
// of whole final windows, and bounded counts of both.
func (c Config) checkWindows() []error {
	final := c.Windows[0]
	if final <= 0 {
		return []error{fmt.Errorf("window %s is not positive", final)}
	}
	var errs []error
	for i, w := range c.Windows {
		switch {
		case w%c.Resolution != 0:
			errs = append(errs, fmt.Errorf("window %s is not a multiple of resolution %s",
				w, c.Resolution))
		case w%final != 0:
			errs = append(errs, fmt.Errorf("window %s is not a multiple of the final window %s",
				w, final))
		case i > 0 && w == c.Windows[i-1]:
			errs = append(errs, fmt.Errorf("window %s is listed twice", w))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if n := final / c.Resolution; n > maxBucketsPerWindow {
		errs = append(errs, fmt.Errorf("window %s over resolution %s makes %d buckets, over %d",
			final, c.Resolution, n, maxBucketsPerWindow))
	}
	if n := c.Windows[len(c.Windows)-1] / final; n > maxRollups {
		errs = append(errs, fmt.Errorf("largest window holds %d final windows, over %d",
			n, maxRollups))
	}
	if c.AllowedLateness > final {
		errs = append(errs, fmt.Errorf("allowed lateness %s is longer than the final window %s",
			c.AllowedLateness, final))
	}
	return errs
}

func (c Config) checkLimits() []error {
	var errs []error
	if c.IdleExpiry <= c.MaxFuture {
		errs = append(errs, fmt.Errorf("idle expiry %s is not longer than max future %s",
			c.IdleExpiry, c.MaxFuture))
	}
	if c.MaxGroups < 2 {
		errs = append(errs, fmt.Errorf("max groups %d is below 2", c.MaxGroups))
	}
	if c.Partitions < 1 || c.Partition < 0 || c.Partition >= c.Partitions {
		errs = append(errs, fmt.Errorf("partition %d is not within 0 to partitions %d - 1",
			c.Partition, c.Partitions))
	}
	if c.MaxAckPending < 0 {
		errs = append(errs, fmt.Errorf("max ack pending %d is negative", c.MaxAckPending))
	}
	if !events.ValidToken(c.Durable) {
		errs = append(errs, fmt.Errorf("durable %q is not a valid consumer name", c.Durable))
	}
	if !events.ValidToken(c.CheckpointBucket) {
		errs = append(errs, fmt.Errorf("checkpoint bucket %q is not a valid bucket name",
			c.CheckpointBucket))
	}
	return errs
}

// consumerName is the durable name of this instance's consumer and
// checkpoint.
func (c Config) consumerName() string {
	if c.Partitions <= 1 {
		return c.Durable
	}
	return fmt.Sprintf("%s-p%dof%d", c.Durable, c.Partition, c.Partitions)
}
