// Package timing records how long operations take and publishes them to
// perfpipe in batches, the way DogStatsD clients ship distributions: each
// sample is folded into a local summary per (operation, status), and one
// events.TimingBatch per flush interval carries them all to the telemetry
// stream on events.BatchTimingSubject(service). The aggregator merges the
// summaries, so a million samples a second cost a few messages a second.
//
// # Use
//
// Make one Recorder per process and service with New, run Run in a
// goroutine for as long as the service runs, and call Record, Since or
// Observe on the work path:
//
//	rec, err := timing.New(js, "checkout", timing.Options{})
//	if err != nil {
//		return err
//	}
//	go rec.Run(ctx) // flushes every 250 ms, and once more when ctx ends
//
//	start := time.Now()
//	err = charge(ctx, order)
//	rec.Since("charge", start, err)
//
// Recording never blocks on the network: it takes a mutex, reads the
// clock, finds the summary of the (op, status) pair and adds the value,
// in about 100 ns and without allocating once the pair is known. Flush
// publishes on demand, for tests and for a last flush at shutdown.
//
// # Batches
//
// Values are milliseconds (see Millis). Flush intervals are aligned to
// wall-clock multiples of Options.FlushInterval, so a batch never spans
// an aggregation bucket whose size is a multiple of the interval; a Flush
// call closes the open interval early. Intervals without samples publish
// nothing. Each batch carries the instance, a sequence number counting
// from 1, and the Nats-Msg-Id "<instance>.<seq>". A batch whose publish
// fails is kept and sent again, with the same id, before newer ones at the
// next flush; the stream stores a resent batch once if it arrived after
// all. At most Options.MaxPending batches wait like this: beyond that the
// oldest is dropped and counted in Stats.
//
// # Event time
//
// Every sample of a batch has its event time within [Start, End) of the
// batch. A sample's event time is the moment Record (or Since, or Observe)
// folds it in, read under the recorder's lock, and the same lock decides
// which interval the sample joins, so no sample recorded just after a
// boundary slips into the interval before it. The reading is the wall
// clock of the last flush plus the monotonic time since, one clock read
// instead of two; a step of the wall clock therefore takes effect at the
// next flush. When it steps backwards, the samples after the step open a
// new interval, so the contract still holds; such batches may overlap
// earlier ones in time.
//
// NOTE: the stream de-duplicates a resent batch only within its
// duplicate window (30 s for PERFPIPE_TELEMETRY); a batch held back longer
// than that by a failing server and then stored twice would be counted
// twice. A failed batch is retried at the next flush, normally well
// inside the window.
package timing
