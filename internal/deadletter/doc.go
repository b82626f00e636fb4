// Package deadletter reads and replays the dead-letter stream
// (PERFPIPE_DEAD), where services keep the messages they gave up on.
//
// List reads the stream with an ordered consumer, which leaves no durable
// state on the server, and returns the entries that match a Filter, oldest
// first. Replay publishes the work requests held by such entries back to
// their submit subject, once per request ID in a run (from its earliest
// dead letter, the later ones superseded) and once within the
// de-duplication window, and can delete the entries it replayed, with
// those they superseded, from the stream. LimitRequests cuts a selection to its first requests.
//
// The perfpipe CLI wraps both as `perfpipe dead list` and
// `perfpipe dead replay`.
package deadletter
