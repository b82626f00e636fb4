// Package agent runs batches of work items and publishes one result per
// item. It is the stage of perfpipe that does the work:
//
//	work.batch.<kind> -> [PERFPIPE_BATCHES] -> agent -> work.result.<kind>
//
// A [Service] pulls batches from a durable consumer only when one of its
// workers is free, runs every item through the [Handler] registered for the
// item's kind, and acks the batch once each of its items has a published
// result. Handlers live in a [Registry]; [NewBuiltins] returns one with the
// built-in kinds (http, csv and sleep) and users add their own with
// [Registry.Register].
//
// Each run of an item goes through watermill middleware: a timeout and
// panic recovery. A transient failure is retried by each kind's
// [RetryPolicy] (attempt limit, exponential backoff with jitter, a cap)
// without holding a worker: the agent submits the item to the scheduler
// again with the next attempt and NotBefore at the end of the backoff, and
// publishes no result for it yet. A handler marks an error that no retry
// can fix with [Permanent]; such an item, like one that used up its
// attempts, gets a result with status error and a record on the
// dead-letter stream. Items of an unknown kind or past their deadline are
// dead-lettered with status dead.
//
// Results of kinds with a cache TTL are kept in a [cache.Store] under the
// kind and a hash of the canonical payload; a repeated request is answered
// from the cache, and concurrent identical requests run once.
//
// Intake is bounded three ways. An item starts only with a slot of its
// kind ([Options.MaxConcurrent], [Config.KindConcurrency]), room for its
// payload under [Config.MaxInFlightBytes], and a free worker; it waits for
// them, never failing for them. A batch whose kind is at its cap waits in
// a goroutine of its own, so batches of other kinds still start. And while
// the monitor reports the host loaded above the high watermarks of
// [AdmissionConfig], no new batch is pulled until the load falls below
// the low ones (see [Service.Throttled]).
//
// Lifecycle: [New], then [Service.Run] until its context is cancelled.
// Run stops pulling, gives in-flight items [Config.DrainTimeout] to finish,
// and returns. A batch some of whose items did not finish, then or for any
// other reason (a result NATS refused, a panic outside the handler), is
// acked once its unfinished items are published again as a remainder
// batch, so that another agent runs only those; if that publish fails, or
// no item of the batch finished, the whole batch is nak'ed and delivered
// again.
package agent
