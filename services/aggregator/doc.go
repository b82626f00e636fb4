// Package aggregator turns perfpipe's telemetry into performance
// snapshots. It consumes single timings (perf.timing.>), producers'
// batched summaries (perf.batch.>) and resource readings (perf.resource.>)
// from the telemetry stream, and groups them by service and operation.
//
// Use it as: New, then Run(ctx) until ctx is cancelled; Run then stops
// pulling, applies what it had buffered, flushes and checkpoints one last
// time and returns. Snapshots serves the latest partial snapshots from
// memory, for HTTP handlers; Stats gives the counters.
//
// # Windows
//
// Samples are placed by event time in buckets aligned to wall-clock
// multiples of Config.Resolution. The smallest of Config.Windows is the
// final window: every flush publishes a partial snapshot of it rolling
// with the clock (the buckets of the last window up to the current one),
// and once a window [s, e) is final it is published once more, final, on
// events.FinalSubject through the PERFPIPE_SNAPSHOTS stream, with a
// Nats-Msg-Id of the consumer, the group and e. A window without samples
// is final with count 0 and no latency figures. The longer windows are
// rollups: each final window is kept, folded into a sketch and deflated,
// and every snapshot carries the merge of the last ones.
//
// Lateness is judged by the time the stream stored an event, so that a
// replay judges it the same way: a window [s, e) takes events stored
// before e plus Config.AllowedLateness, and it is final once the consumer
// has applied everything stored before then (the watermark). Later events,
// and events more than Config.MaxFuture ahead of their storage time, are
// dropped and counted in the group's snapshot.
//
// # Quantiles
//
// Durations are summarised by internal/quantile: nearest rank, exact while
// a window holds at most 1,000 samples, within 1% beyond. A bucket keeps
// its values verbatim while some window or view over it may still hold at
// most 1,000 samples, and is folded into a packed sketch otherwise, which
// keeps a group within 64 KiB for all its windows. Negative durations and
// corrupt summaries are rejected and counted, never folded in.
//
// # Restarts and scale
//
// Every Config.CheckpointInterval the state of every group and the stream
// sequence of the last event applied go to a JetStream object store; only
// then are the events acknowledged (the consumer acks cumulatively). A
// restart restores the checkpoint and consumes from the next sequence, so
// no event is lost or counted twice. Config.MaxGroups caps the groups; the
// samples of further groups go to the overflow group. Instances share the
// groups by Config.Partitions and Config.Partition, each with its own
// consumer and checkpoint; the union of their snapshots is what a single
// instance would publish.
//
// The push path (the consumer, under one lock per shard of groups) and the
// flush path (the flush loop) meet only at the shards' locks.
package aggregator
