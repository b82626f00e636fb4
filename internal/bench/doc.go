// Package bench measures perfpipe against its targets: quantile accuracy
// beside a naive baseline; end-to-end ingest of timing samples beside the
// raw JetStream consume rate of the same machine; and the work path, with
// the throughput and stage latency of no-op items and how late the
// scheduler releases delayed items. `perfpipe bench` prints what it
// measures; BENCHMARKS.md records the figures.
package bench
