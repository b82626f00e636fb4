// Package bench measures perfpipe against its targets: quantile accuracy
// beside a naive baseline, and end-to-end ingest of timing samples beside
// the raw JetStream consume rate of the same machine. `perfpipe bench`
// prints what it measures; BENCHMARKS.md records the figures.
package bench
