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

// Figures are a group's figures over one window. Latencies are in
// milliseconds; the latency fields are absent (nil) when the window holds
// no timing, never zero or a previous window's values. Quantiles are
// nearest rank: the smallest value with at least q*Count values at or
// below it; they lie within [MinMs, MaxMs] and never decrease as q grows.
type Figures struct {
	Window Duration  `msgpack:"window" json:"window"`
	Start  time.Time `msgpack:"start" json:"start"`
	End    time.Time `msgpack:"end" json:"end"`
	Count  int64     `msgpack:"count" json:"count"`
	Errors int64     `msgpack:"errors" json:"errors"`
	// Rate is Count per second over the window, or over the part of it
	// since the group's first sample when that is shorter.
	Rate   float64  `msgpack:"rate" json:"rate"`
	MinMs  *float64 `msgpack:"min_ms,omitempty" json:"min_ms,omitempty"`
	MaxMs  *float64 `msgpack:"max_ms,omitempty" json:"max_ms,omitempty"`
	MeanMs *float64 `msgpack:"mean_ms,omitempty" json:"mean_ms,omitempty"`
	P50Ms  *float64 `msgpack:"p50_ms,omitempty" json:"p50_ms,omitempty"`
	P90Ms  *float64 `msgpack:"p90_ms,omitempty" json:"p90_ms,omitempty"`
	P95Ms  *float64 `msgpack:"p95_ms,omitempty" json:"p95_ms,omitempty"`
	P99Ms  *float64 `msgpack:"p99_ms,omitempty" json:"p99_ms,omitempty"`
	P999Ms *float64 `msgpack:"p999_ms,omitempty" json:"p999_ms,omitempty"`
	// Cache counts the window's cache lookups, for groups that have them.
	Cache *CacheFigures `msgpack:"cache,omitempty" json:"cache,omitempty"`
}

// Snapshot is the aggregator's view of one (service, op) group, published
// on SnapshotSubject(service, op) while its window is open (Partial) and
// once more, final, on FinalSubject(service, op) when it closes.
//
// A partial snapshot covers a window rolling with the clock: the last
// Window up to the end of the current bucket. A final one covers a closed
// window aligned to a wall-clock multiple of its size, and is published
// exactly once per (group, window), through the PERFPIPE_SNAPSHOTS stream.
type Snapshot struct {
	Meta
	Service string `msgpack:"service" json:"service"`
	Op      string `msgpack:"op" json:"op"`
	// Partial is true for a live view of an open window, false for the
	// final figures of a closed one.
	Partial bool `msgpack:"partial" json:"partial"`
	Figures `msgpack:",inline"`
	// Total counts every sample of the group the aggregator accepted.
	Total int64 `msgpack:"total" json:"total"`
	// Dropped counts the group's valid samples that fell outside every
	// window: Late plus Future.
	Dropped int64 `msgpack:"dropped,omitempty" json:"dropped,omitempty"`
	// Late counts samples that arrived after their window was final.
	Late int64 `msgpack:"late,omitempty" json:"late,omitempty"`
	// Future counts samples whose time was too far ahead of their arrival.
	Future int64 `msgpack:"future,omitempty" json:"future,omitempty"`
	// Rejected counts bad input of the group: negative durations, corrupt
	// summaries.
	Rejected int64            `msgpack:"rejected,omitempty" json:"rejected,omitempty"`
	Resource *ResourceFigures `msgpack:"resource,omitempty" json:"resource,omitempty"`
	// Rollups are the figures over longer windows (5 and 15 minutes by
	// default), each the merge of the group's last final windows.
	Rollups []Figures `msgpack:"rollups,omitempty" json:"rollups,omitempty"`
}

// EventType implements Event.
func (*Snapshot) EventType() Type { return TypeSnapshot }
