package events

import "time"

// Timing statuses; any other short word is allowed too.
const (
	TimingOK    = "ok"
	TimingError = "error"
)

// Timing is one measured step, published by every service on
// TimingSubject(service, op).
type Timing struct {
	Meta
	Service string `msgpack:"service" json:"service"`
	Op      string `msgpack:"op" json:"op"`
	// Status is "ok", "error", or another short word such as "hit".
	Status   string        `msgpack:"status,omitempty" json:"status,omitempty"`
	Duration time.Duration `msgpack:"duration" json:"duration"`
	Time     time.Time     `msgpack:"time" json:"time"`
	Host     string        `msgpack:"host,omitempty" json:"host,omitempty"`
}

// EventType implements Event.
func (*Timing) EventType() Type { return TypeTiming }

// TimingBatch carries one producer's timings of one flush interval,
// summarised per (op, status), the way DogStatsD clients ship
// distributions: producers record locally and send one message per flush
// instead of one per sample. It is published on BatchTimingSubject(service)
// with the Nats-Msg-Id "<instance>.<seq>", so a resend is stored once.
type TimingBatch struct {
	Meta
	Service string `msgpack:"service" json:"service"`
	Host    string `msgpack:"host,omitempty" json:"host,omitempty"`
	// Instance identifies the producing process; unique per start.
	Instance string `msgpack:"instance" json:"instance"`
	// Seq numbers the instance's flushes from 1.
	Seq uint64 `msgpack:"seq" json:"seq"`
	// Start and End bound the event times of every sample in the batch.
	// Producers align flushes to multiples of their interval, so a batch
	// falls inside one aggregation bucket when the bucket size is a
	// multiple of the interval.
	Start  time.Time     `msgpack:"start" json:"start"`
	End    time.Time     `msgpack:"end" json:"end"`
	Deltas []TimingDelta `msgpack:"deltas" json:"deltas"`
}

// EventType implements Event.
func (*TimingBatch) EventType() Type { return TypeTimingBatch }

// TimingDelta summarises the samples of one (op, status) in a batch.
type TimingDelta struct {
	Op     string `msgpack:"op" json:"op"`
	Status string `msgpack:"status,omitempty" json:"status,omitempty"`
	// Summary is the samples' durations in milliseconds as a mergeable
	// summary: a msgpack map {n, sum, min, max, exact: [values] while n
	// is at most 1000, or sketch: DDSketch bytes (DataDog sketches-go
	// encoding, 0.5% relative accuracy)}.
	Summary []byte `msgpack:"summary" json:"summary"`
}

// Resource is one reading of CPU and memory, for the host and for one
// perfpipe process, published by the monitor on ResourceSubject.
type Resource struct {
	Meta
	Host    string    `msgpack:"host" json:"host"`
	Service string    `msgpack:"service" json:"service"`
	PID     int32     `msgpack:"pid,omitempty" json:"pid,omitempty"`
	Time    time.Time `msgpack:"time" json:"time"`
	// CPUPercent is the process's CPU use since the previous reading,
	// where 100 is one full core.
	CPUPercent float64 `msgpack:"cpu_percent" json:"cpu_percent"`
	RSSBytes   uint64  `msgpack:"rss_bytes" json:"rss_bytes"`
	// HostCPUPercent is the whole machine's CPU use, 0-100.
	HostCPUPercent  float64 `msgpack:"host_cpu_percent" json:"host_cpu_percent"`
	HostMemUsed     uint64  `msgpack:"host_mem_used" json:"host_mem_used"`
	HostMemTotal    uint64  `msgpack:"host_mem_total" json:"host_mem_total"`
	HostMemUsedPerc float64 `msgpack:"host_mem_used_percent" json:"host_mem_used_percent"`
}

// EventType implements Event.
func (*Resource) EventType() Type { return TypeResource }

// ResourceFigures are the latest resource readings that belong to a
// snapshot's group.
type ResourceFigures struct {
	CPUPercent      float64 `msgpack:"cpu_percent" json:"cpu_percent"`
	RSSBytes        uint64  `msgpack:"rss_bytes" json:"rss_bytes"`
	HostCPUPercent  float64 `msgpack:"host_cpu_percent" json:"host_cpu_percent"`
	HostMemUsedPerc float64 `msgpack:"host_mem_used_percent" json:"host_mem_used_percent"`
	Processes       int     `msgpack:"processes" json:"processes"`
}

// CacheFigures count result-cache lookups of a group within the window.
type CacheFigures struct {
	Hits   int64 `msgpack:"hits" json:"hits"`
	Misses int64 `msgpack:"misses" json:"misses"`
}

// Snapshot is the aggregator's view of one (service, op) group over a
// sliding window, published on SnapshotSubject(service, op). Latencies are
// in milliseconds; quantiles are nearest-rank and absent when Count is 0.
type Snapshot struct {
	Meta
	Service string    `msgpack:"service" json:"service"`
	Op      string    `msgpack:"op" json:"op"`
	Window  Duration  `msgpack:"window" json:"window"`
	Start   time.Time `msgpack:"start" json:"start"`
	End     time.Time `msgpack:"end" json:"end"`
	Count   int64     `msgpack:"count" json:"count"`
	Errors  int64     `msgpack:"errors" json:"errors"`
	// Rate is Count per second over the window, or over the time since
	// the group's first sample when that is shorter.
	Rate   float64 `msgpack:"rate" json:"rate"`
	MinMs  float64 `msgpack:"min_ms" json:"min_ms"`
	MaxMs  float64 `msgpack:"max_ms" json:"max_ms"`
	MeanMs float64 `msgpack:"mean_ms" json:"mean_ms"`
	P50Ms  float64 `msgpack:"p50_ms" json:"p50_ms"`
	P90Ms  float64 `msgpack:"p90_ms" json:"p90_ms"`
	P95Ms  float64 `msgpack:"p95_ms" json:"p95_ms"`
	P99Ms  float64 `msgpack:"p99_ms" json:"p99_ms"`
	P999Ms float64 `msgpack:"p999_ms" json:"p999_ms"`
	// Total counts every sample of the group since the aggregator started.
	Total int64 `msgpack:"total" json:"total"`
	// Dropped counts the group's samples since the aggregator started that
	// were valid but fell outside the window: older than it, or too far in
	// the future.
	Dropped  int64            `msgpack:"dropped,omitempty" json:"dropped,omitempty"`
	Cache    *CacheFigures    `msgpack:"cache,omitempty" json:"cache,omitempty"`
	Resource *ResourceFigures `msgpack:"resource,omitempty" json:"resource,omitempty"`
}

// EventType implements Event.
func (*Snapshot) EventType() Type { return TypeSnapshot }
