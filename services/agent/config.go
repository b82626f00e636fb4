package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// minAckWait is the shortest AckWait an agent sets on its durable, and
// progressMax the longest time between a running batch's progress reports:
// well under minAckWait, so that no agent's ack wait cuts another's items.
const (
	minAckWait  = time.Second
	progressMax = 300 * time.Millisecond
)

// Defaults applied by Config for fields left zero.
const (
	DefaultDurable       = "agent"
	DefaultWorkers       = 16
	DefaultMaxAckPending = 256
	DefaultAckWait       = 30 * time.Second
	DefaultPollWait      = 5 * time.Second
	DefaultMaxAttempts   = 3
	DefaultRetryInitial  = 200 * time.Millisecond
	DefaultRetryMax      = 30 * time.Second
	DefaultItemTimeout   = 30 * time.Second
	DefaultDrainTimeout  = 10 * time.Second
	DefaultCacheTimeout  = time.Second

	DefaultMaxInFlightBytes = 64 << 20
	DefaultHighCPU          = 90.0
	DefaultLowCPU           = 75.0
	DefaultHighMem          = 90.0
	DefaultLowMem           = 80.0
	DefaultReadingMaxAge    = 5 * time.Second

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
	// the batch again: how soon the batches of a dead agent run elsewhere.
	// The agents of one durable share it; the agent started last sets it.
	// A running batch reports progress every AckWait/3, or every 300 ms
	// when that is shorter, so long items are never cut by it. At least
	// 1 s.
	// Zero means 30 s.
	//
	// NOTE: the durable has one ack wait for every agent on it. An agent
	// lengthens it but never shortens it, since the agents already on it
	// report progress by their own, longer one; to shorten it, delete the
	// durable while no agent runs.
	AckWait time.Duration
	// PollWait bounds one pull request when no batch is waiting.
	// Zero means 5 s.
	PollWait time.Duration
	// MaxAttempts is how many times an item's handler may run when it
	// fails with transient errors, for kinds whose RetryPolicy sets none;
	// 1 means no retries. Zero means 3.
	MaxAttempts int
	// RetryInitial is the backoff after the first failed run, for kinds
	// whose RetryPolicy sets none; later ones double, with ±50% jitter, up
	// to RetryMax. A retry is submitted again to the scheduler, which
	// holds it for the backoff; no worker waits. Zero means 200 ms.
	RetryInitial time.Duration
	// RetryMax caps one backoff, for kinds whose RetryPolicy sets none.
	// Zero means 30 s.
	RetryMax time.Duration
	// KindRetry overrides, by kind and field by field, the kind's
	// Options.Retry. Nil means no overrides.
	KindRetry map[string]RetryPolicy
	// ItemTimeout bounds one run of an item's handler; a run that times
	// out is a transient failure. Zero means 30 s.
	ItemTimeout time.Duration
	// DrainTimeout is how long Run lets in-flight items finish after its
	// context is cancelled; items still running then are stopped and,
	// with those not started, handed back in a remainder batch of their
	// own (their whole batches nak'ed if that publish fails), so that the
	// finished items of a batch do not run again. Zero means 10 s.
	DrainTimeout time.Duration
	// CacheTimeout bounds one result-cache read or write; a slow cache
	// counts as a miss. Zero means 1 s.
	CacheTimeout time.Duration

	// KindConcurrency caps, by kind, the items of that kind that run at
	// once, in place of the kind's Options.MaxConcurrent; zero here
	// removes the kind's own cap. An item over its kind's cap waits for a
	// slot while items of other kinds run. Nil means no overrides.
	KindConcurrency map[string]int
	// MaxInFlightBytes caps the payload bytes of the items running at
	// once; an item waits until its bytes are free, and one larger than
	// the cap runs alone. Zero means 64 MiB; negative means no cap.
	MaxInFlightBytes int64
	// Admission slows intake while the host is loaded.
	Admission AdmissionConfig

	// HTTP configures the built-in http kind.
	HTTP HTTPConfig
	// CSV configures the built-in csv kind.
	CSV CSVConfig
}

// AdmissionConfig configures how the agent watches the monitor's readings
// of its host (events.Resource on perf.resource.>) and stops pulling
// batches while the host is loaded. Percentages are 0-100.
//
// Intake stops when host CPU rises above HighCPU or memory above HighMem,
// and resumes only when both are below LowCPU and LowMem, so that readings
// between the watermarks do not flap it. Without fresh readings (no
// monitor, or none within MaxAge), intake goes on.
type AdmissionConfig struct {
	// Disabled ignores the readings: intake never stops for load.
	Disabled bool
	// Host is the host whose readings count, as the monitor names it.
	// Empty means this machine's host name; "*" means any host.
	Host string
	// HighCPU stops intake above it. Zero means 90.
	HighCPU float64
	// LowCPU, with LowMem, resumes intake below it. Zero means 75.
	LowCPU float64
	// HighMem stops intake above it. Zero means 90.
	HighMem float64
	// LowMem, with LowCPU, resumes intake below it. Zero means 80.
	LowMem float64
	// MaxAge is how long a reading counts; an older one is ignored.
	// Zero means 5 s, five of the monitor's default intervals.
	MaxAge time.Duration
}

// withDefaults returns a with every zero field set to its default.
func (a AdmissionConfig) withDefaults() AdmissionConfig {
	a.Host = orDefault(a.Host, hostname())
	a.HighCPU = orDefault(a.HighCPU, DefaultHighCPU)
	a.LowCPU = orDefault(a.LowCPU, DefaultLowCPU)
	a.HighMem = orDefault(a.HighMem, DefaultHighMem)
	a.LowMem = orDefault(a.LowMem, DefaultLowMem)
	a.MaxAge = orDefault(a.MaxAge, DefaultReadingMaxAge)
	return a
}

// validate reports a watermark out of range or a low one above its high.
func (a AdmissionConfig) validate() error {
	d := a.withDefaults()
	pairs := []struct {
		name      string
		low, high float64
	}{
		{"cpu", d.LowCPU, d.HighCPU},
		{"mem", d.LowMem, d.HighMem},
	}
	for _, p := range pairs {
		if p.low < 0 || p.high > 100 || p.low > p.high {
			return fmt.Errorf("agent config: admission %s watermarks low %g, high %g: "+
				"want 0 <= low <= high <= 100", p.name, p.low, p.high)
		}
	}
	if a.MaxAge < 0 {
		return fmt.Errorf("agent config: admission max age is negative (%s)", a.MaxAge)
	}
	return nil
}

// ParseKindCounts reads a list such as "http=4,csv=2" into a map for
// Config.KindConcurrency.
func ParseKindCounts(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		kind, count, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(strings.TrimSpace(count))
		if !ok || err != nil {
			return nil, fmt.Errorf("parse kind count %q: want kind=number", part)
		}
		out[strings.TrimSpace(kind)] = n
	}
	return out, nil
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
	c.MaxInFlightBytes = orDefault(c.MaxInFlightBytes, DefaultMaxInFlightBytes)
	c.Admission = c.Admission.withDefaults()

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
		dur  bool // v is a time.Duration
	}{
		{"workers", int64(c.Workers), false},
		{"max ack pending", int64(c.MaxAckPending), false},
		{"ack wait", int64(c.AckWait), true},
		{"poll wait", int64(c.PollWait), true},
		{"max attempts", int64(c.MaxAttempts), false},
		{"retry initial", int64(c.RetryInitial), true},
		{"retry max", int64(c.RetryMax), true},
		{"item timeout", int64(c.ItemTimeout), true},
		{"drain timeout", int64(c.DrainTimeout), true},
		{"cache timeout", int64(c.CacheTimeout), true},
		{"http max body", c.HTTP.MaxBody, false},
		{"http timeout", int64(c.HTTP.Timeout), true},
		{"http max idle conns per host", int64(c.HTTP.MaxIdleConnsPerHost), false},
		{"http cache ttl", int64(c.HTTP.CacheTTL), true},
		{"csv chunk rows", int64(c.CSV.ChunkRows), false},
		{"csv max groups", int64(c.CSV.MaxGroups), false},
	}
	for _, f := range counts {
		switch {
		case f.v < 0 && f.dur:
			return fmt.Errorf("agent config: %s is negative (%s)", f.name, time.Duration(f.v))
		case f.v < 0:
			return fmt.Errorf("agent config: %s is negative (%d)", f.name, f.v)
		}
	}
	if c.RetryMax != 0 && c.RetryMax < c.RetryInitial {
		return fmt.Errorf("agent config: retry max %s below retry initial %s",
			c.RetryMax, c.RetryInitial)
	}
	for kind, p := range c.KindRetry {
		if !events.ValidToken(kind) {
			return fmt.Errorf("agent config: kind retry %q: not a kind", kind)
		}
		if err := p.validate(); err != nil {
			return fmt.Errorf("agent config: kind retry %s: %w", kind, err)
		}
	}
	for kind, n := range c.KindConcurrency {
		if !events.ValidToken(kind) || n < 0 {
			return fmt.Errorf("agent config: kind concurrency %q=%d: want a kind and "+
				"a count >= 0", kind, n)
		}
	}
	if err := c.Admission.validate(); err != nil {
		return err
	}
	if c.AckWait != 0 && c.AckWait < minAckWait {
		return fmt.Errorf("agent config: ack wait %s below %s", c.AckWait, minAckWait)
	}
	if c.PollWait != 0 && c.PollWait < 100*time.Millisecond {
		return fmt.Errorf("agent config: poll wait %s below 100ms", c.PollWait)
	}
	return nil
}
