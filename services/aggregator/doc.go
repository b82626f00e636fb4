// Package aggregator turns perfpipe's telemetry into live performance
// snapshots. It consumes timings (perf.timing.>) and resource readings
// (perf.resource.>) from the telemetry stream, groups them by service and
// operation, and keeps for each group a sliding window of buckets aligned
// to wall-clock multiples of a resolution. Each bucket holds a mergeable
// quantile summary of the durations and counts of errors, cache hits and
// misses.
//
// On every publish tick, aligned to the clock, the service merges each
// group's buckets into an events.Snapshot (count, rate, errors, min, max,
// mean and nearest-rank quantiles in milliseconds, cache and resource
// figures), publishes it on core NATS at events.SnapshotSubject, and writes
// the latest snapshot of every group to a cache.Store in one batch, with
// the very bytes it published.
//
// Use it as: New, then Run(ctx) until ctx is cancelled; Run then stops
// pulling, applies what it had buffered, flushes one last time and returns.
// Snapshots serves the latest snapshots from memory, for HTTP handlers.
//
// Samples are placed by event time. A sample older than the window or too
// far in the future is dropped and counted in its group's Dropped figure;
// an undecodable or invalid event is counted as rejected and acknowledged,
// since telemetry is not worth a dead letter.
//
// NOTE: every instance must see all events of a group, so run one
// instance per durable consumer until groups are partitioned.
package aggregator
