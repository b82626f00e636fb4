package agent

import (
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults applied by Config for fields left zero.
const (
	DefaultDurable       = "agent"
	DefaultWorkers       = 16
	DefaultMaxAckPending = 256
	DefaultAckWait       = 30 * time.Second
	DefaultPollWait      = 5 * time.Second
	DefaultMaxAttempts   = 3
	DefaultRetryInitial  = 100 * time.Millisecond
	DefaultRetryMax      = 5 * time.Second
	DefaultItemTimeout   = 30 * time.Second
	DefaultDrainTimeout  = 10 * time.Second
	DefaultCacheTimeout  = time.Second

	DefaultHTTPMaxBody     = 16 << 20
	DefaultHTTPTimeout     = 10 * time.Second
	DefaultHTTPIdlePerHost = 32
	DefaultCSVChunkRows    = 4096
	DefaultCSVMaxGroups    = 100000
	DefaultCSVCacheTTL     = 10 * time.Minute
)

// DefaultAllowedHosts are the hosts the http kind may call when
// HTTPConfig.AllowedHosts is empty: loopback only.
var DefaultAllowedHosts = []string{"127.0.0.1", "::1", "localhost"}

// Config configures an agent and its built-in kinds.
type Config struct {
	// Name identifies this agent in results (Result.Agent).
	// Empty means the host name.
	Name string
	// Durable is the durable consumer on PERFPIPE_BATCHES; agents that share
	// it share the work. Empty means "agent".
	Durable string
	// Workers is how many items run at once, over all batches. A batch is
	// pulled only when a worker is free. Zero means 16.
	Workers int
	// MaxAckPending bounds the batches delivered and not yet acked, over
	// every agent on the durable. Zero means 256.
	MaxAckPending int
	// AckWait is how long NATS waits for a batch's ack before it delivers
	// the batch again; a running batch reports progress every AckWait/3.
	// Zero means 30 s.
	AckWait time.Duration
	// PollWait bounds one pull request when no batch is waiting.
	// Zero means 5 s.
	PollWait time.Duration
	// MaxAttempts is how many times an item's handler may run when it
	// fails with transient errors; 1 means no retries. Zero means 3.
	MaxAttempts int
	// RetryInitial is the first backoff interval between attempts; later
	// intervals double, with ±50% jitter, up to RetryMax. Zero means 100 ms.
	//
	// NOTE: watermill's Retry draws one backoff interval when it asks
	// whether to retry and another before it waits, so the waits actually
	// grow about fourfold: near 2, 8, 32... times RetryInitial.
	RetryInitial time.Duration
	// RetryMax caps the backoff interval. Zero means 5 s.
	RetryMax time.Duration
	// ItemTimeout bounds one item's handler time over all its attempts,
	// backoff waits included. Zero means 30 s.
	ItemTimeout time.Duration
	// DrainTimeout is how long Run lets in-flight items finish after its
	// context is cancelled; items still running then are stopped and
	// their batches nak'ed. Zero means 10 s.
	DrainTimeout time.Duration
	// CacheTimeout bounds one result-cache read or write; a slow cache
	// counts as a miss. Zero means 1 s.
	CacheTimeout time.Duration

	// HTTP configures the built-in http kind.
	HTTP HTTPConfig
	// CSV configures the built-in csv kind.
	CSV CSVConfig
}

// HTTPConfig configures the built-in http kind.
type HTTPConfig struct {
	// AllowedHosts are the host names or IP addresses (no port) that
	// requests may go to, redirects included; "*" allows any host.
	// Empty means DefaultAllowedHosts, loopback only.
	AllowedHosts []string
	// MaxBody is the largest response body read, in bytes; a longer body
	// fails the item permanently. Zero means 16 MiB.
	MaxBody int64
	// Timeout bounds one request, body included. Zero means 10 s.
	Timeout time.Duration
	// MaxIdleConnsPerHost is how many idle connections the shared client
	// keeps per host. Zero means 32.
	MaxIdleConnsPerHost int
	// CacheTTL is how long http results stay cached. Zero means not
	// cached, unless a request sets its own TTL.
	CacheTTL time.Duration
}

// CSVConfig configures the built-in csv kind.
type CSVConfig struct {
	// DataDir is the folder csv requests read files from; a path that
	// leaves it is refused. Empty means the csv kind refuses every request.
	DataDir string
	// ChunkRows is how many rows are read between checks for
	// cancellation. Zero means 4096.
	ChunkRows int
	// MaxGroups caps the distinct group keys of one request; more fail
	// the item permanently. Zero means 100000.
	MaxGroups int
	// CacheTTL is how long csv results stay cached. Zero means 10 min;
	// a negative value means not cached, unless a request sets its own TTL.
	CacheTTL time.Duration
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	c.Durable = orDefault(c.Durable, DefaultDurable)
	c.Workers = orDefault(c.Workers, DefaultWorkers)
	c.MaxAckPending = orDefault(c.MaxAckPending, DefaultMaxAckPending)
	c.AckWait = orDefault(c.AckWait, DefaultAckWait)
	c.PollWait = orDefault(c.PollWait, DefaultPollWait)
	c.MaxAttempts = orDefault(c.MaxAttempts, DefaultMaxAttempts)
	c.RetryInitial = orDefault(c.RetryInitial, DefaultRetryInitial)
	c.RetryMax = orDefault(c.RetryMax, DefaultRetryMax)
	c.ItemTimeout = orDefault(c.ItemTimeout, DefaultItemTimeout)
	c.DrainTimeout = orDefault(c.DrainTimeout, DefaultDrainTimeout)
	c.CacheTimeout = orDefault(c.CacheTimeout, DefaultCacheTimeout)

	if len(c.HTTP.AllowedHosts) == 0 {
		c.HTTP.AllowedHosts = DefaultAllowedHosts
	}
	c.HTTP.MaxBody = orDefault(c.HTTP.MaxBody, DefaultHTTPMaxBody)
	c.HTTP.Timeout = orDefault(c.HTTP.Timeout, DefaultHTTPTimeout)
	c.HTTP.MaxIdleConnsPerHost = orDefault(c.HTTP.MaxIdleConnsPerHost, DefaultHTTPIdlePerHost)

	c.CSV.ChunkRows = orDefault(c.CSV.ChunkRows, DefaultCSVChunkRows)
	c.CSV.MaxGroups = orDefault(c.CSV.MaxGroups, DefaultCSVMaxGroups)
	c.CSV.CacheTTL = orDefault(c.CSV.CacheTTL, DefaultCSVCacheTTL)
	return c
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Validate reports the first field that no default can repair.
func (c Config) Validate() error {
	if c.Durable != "" && !events.ValidToken(c.Durable) {
		return fmt.Errorf("agent config: durable %q is not a valid consumer name", c.Durable)
	}
	counts := []struct {
		name string
		v    int64
	}{
		{"workers", int64(c.Workers)},
		{"max ack pending", int64(c.MaxAckPending)},
		{"ack wait", int64(c.AckWait)},
		{"poll wait", int64(c.PollWait)},
		{"max attempts", int64(c.MaxAttempts)},
		{"retry initial", int64(c.RetryInitial)},
		{"retry max", int64(c.RetryMax)},
		{"item timeout", int64(c.ItemTimeout)},
		{"drain timeout", int64(c.DrainTimeout)},
		{"cache timeout", int64(c.CacheTimeout)},
		{"http max body", c.HTTP.MaxBody},
		{"http timeout", int64(c.HTTP.Timeout)},
		{"http max idle conns per host", int64(c.HTTP.MaxIdleConnsPerHost)},
		{"http cache ttl", int64(c.HTTP.CacheTTL)},
		{"csv chunk rows", int64(c.CSV.ChunkRows)},
		{"csv max groups", int64(c.CSV.MaxGroups)},
	}
	for _, f := range counts {
		if f.v < 0 {
			return fmt.Errorf("agent config: %s is negative (%d)", f.name, f.v)
		}
	}
	if c.RetryMax != 0 && c.RetryMax < c.RetryInitial {
		return fmt.Errorf("agent config: retry max %s below retry initial %s",
			c.RetryMax, c.RetryInitial)
	}
	if c.AckWait != 0 && c.AckWait < time.Second {
		return fmt.Errorf("agent config: ack wait %s below 1s", c.AckWait)
	}
	if c.PollWait != 0 && c.PollWait < 100*time.Millisecond {
		return fmt.Errorf("agent config: poll wait %s below 100ms", c.PollWait)
	}
	return nil
}
