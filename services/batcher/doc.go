// Package batcher groups ready work items of one kind into batches and
// hands them on to the agents.
//
// The batcher reads the READY stream (work.ready.<kind>) through a durable
// pull consumer and keeps one open batch per kind. A batch closes when it
// holds MaxCount items, when the next item would take its encoded size past
// MaxBytes, or when Linger has passed since its first item arrived; a
// single item larger than MaxBytes travels alone. A closed batch is
// published on work.batch.<kind> with an ID derived from its items' stream
// sequences, so that a redelivered identical batch is dropped by the
// stream's de-duplication, and only then are its items acknowledged. A
// batch that cannot be published is negatively acknowledged so that its
// items come back: the batcher never drops an item.
//
// Batch building lives in [Accumulator], which knows nothing of NATS; the
// limits of each kind come from a [Policy], by default [Static] built from
// the [Config]. With Config.Adaptive set, a [Controller] takes its place:
// it listens to the results on work.result.> and sets each kind's MaxCount
// so that the p95 of its batches' run time stays near a target.
//
// Use [New] to build a [Service] and [Service.Run] to run it until its
// context ends; Run then stops pulling, publishes the open batches within
// Config.ShutdownTimeout and returns. [Service.Stats] reports counts for
// health output.
package batcher
