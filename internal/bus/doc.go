// Package bus connects perfpipe services to NATS and JetStream: it dials
// with reconnects, creates the streams of the wire contract idempotently,
// publishes events with their type headers and de-duplication IDs, and
// dead-letters messages with a reason.
//
// A service calls Connect once, EnsureStreams at start, and Close when it
// has drained.
package bus
