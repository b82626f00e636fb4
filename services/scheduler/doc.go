// Package scheduler releases submitted work when it is due and in priority
// order. It consumes work requests from the PERFPIPE_WORK stream
// (work.submit.<kind>) and publishes each one, unchanged but for its trace,
// to work.ready.<kind> for the batcher.
//
// An item is due at the later of its NotBefore time and its submission time
// plus its Delay; it is never released earlier. Due items wait for credit:
// at most Config.MaxInFlight released items may be outstanding, and a
// result on work.result.<kind> gives the credit back. While items wait,
// the highest priority goes first, first come first within a priority, and
// every Config.AgingInterval waited raises an item's priority by one so
// that no class starves.
// Config.ReservedInFlight of the credit is kept for items whose own
// priority is Config.ReservedPriority or more, so that they start at once
// even when low-priority items hold all the rest.
//
// An accepted item that cannot be released at once is written to a
// JetStream key-value bucket before its WORK message is acknowledged, and
// read back when the service starts, so a restart loses no pending item.
// Releases carry the request ID as Nats-Msg-Id, so a release repeated
// after a crash is dropped by the READY stream.
//
// Bad input is dead-lettered with a reason on work.dead.<kind>; when the
// request could be read, a result with status "dead" tells the submitter.
//
// Build a Service with New and call Run until its context ends.
package scheduler
