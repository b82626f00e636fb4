package bench

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// batchLog records one run of the adaptive scenario: the phase of each
// item submitted, the items of each batch published, and each item's
// first result. A result names its item, not its batch, so the batches
// are read from PERFPIPE_BATCHES, as the batcher's own feedback keeps
// the items of each batch it publishes.
type batchLog struct {
	mu      sync.Mutex
	phase   map[string]int
	results map[string]span
	batches [][]string
}

// span is when an item started and finished on the agent.
type span struct{ started, finished time.Time }

func newBatchLog() *batchLog {
	return &batchLog{phase: make(map[string]int), results: make(map[string]span)}
}

// submitted records that item id of phase was submitted.
func (l *batchLog) submitted(id string, phase int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phase[id] = phase
}

// result records r and reports whether it is the first result of an item
// submitted. A result without a start (a dead one) spans its finish only.
func (l *batchLog) result(r *events.Result) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.phase[r.ID]; !ok {
		return false
	}
	if _, seen := l.results[r.ID]; seen {
		return false
	}
	started := r.Started
	if started.IsZero() {
		started = r.Finished
	}
	l.results[r.ID] = span{started: started, finished: r.Finished}
	return true
}

// batch records the items of b.
func (l *batchLog) batch(b *events.Batch) {
	ids := make([]string, 0, len(b.Items))
	for _, it := range b.Items {
		ids = append(ids, it.ID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.batches = append(l.batches, ids)
}

// followLog feeds the batches and the results stored from now on to l,
// and hands every result to onResult.
func followLog(ctx context.Context, conn *bus.Conn, l *batchLog,
	onResult func(*events.Result)) ([]jetstream.ConsumeContext, error) {
	batches, err := follow(ctx, conn, events.StreamBatches, events.BatchAll,
		func(data []byte) {
			var b events.Batch
			if events.Unmarshal(data, &b) == nil {
				l.batch(&b)
			}
		})
	if err != nil {
		return nil, err
	}
	results, err := follow(ctx, conn, events.StreamResults, events.ResultAll,
		func(data []byte) {
			var r events.Result
			if events.Unmarshal(data, &r) == nil {
				onResult(&r)
			}
		})
	if err != nil {
		batches.Stop()
		return nil, err
	}
	return []jetstream.ConsumeContext{batches, results}, nil
}

// follow hands the data of every message stored on subject of stream from
// now on to fn.
func follow(ctx context.Context, conn *bus.Conn, stream, subject string,
	fn func([]byte)) (jetstream.ConsumeContext, error) {
	cons, err := conn.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", subject, err)
	}
	return cons.Consume(func(m jetstream.Msg) { fn(m.Data()) })
}

// batchSpan is one batch as the agent ran it.
type batchSpan struct {
	// first is when its first item started, last when its last finished.
	first, last time.Time
	size        int
	// phase is the phase of its items, or -1 when they are of several.
	phase int
}

func (b batchSpan) latency() time.Duration { return b.last.Sub(b.first) }

// spans returns the batches whose every item has its result, and the
// finish times of every result.
func (l *batchLog) spans() ([]batchSpan, []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []batchSpan
	for _, ids := range l.batches {
		if b, ok := l.span(ids); ok {
			out = append(out, b)
		}
	}
	finished := make([]time.Time, 0, len(l.results))
	for _, s := range l.results {
		finished = append(finished, s.finished)
	}
	return out, finished
}

// span is the batch of ids, if every item has its result. Call with mu
// held.
func (l *batchLog) span(ids []string) (batchSpan, bool) {
	b := batchSpan{size: len(ids), phase: -1}
	for i, id := range ids {
		s, ok := l.results[id]
		if !ok {
			return batchSpan{}, false
		}
		if p := l.phase[id]; i == 0 {
			b.phase = p
		} else if p != b.phase {
			b.phase = -1
		}
		if b.first.IsZero() || s.started.Before(b.first) {
			b.first = s.started
		}
		if s.finished.After(b.last) {
			b.last = s.finished
		}
	}
	return b, len(ids) > 0
}

// figures computes a run's figures from its batches and finish times. The
// run started at start and had phases phases of length phase each; a
// batch longer than over counts in Over.
func figures(spans []batchSpan, finished []time.Time, start time.Time,
	phase time.Duration, phases int, over time.Duration) AdaptiveRun {
	end := start.Add(phase * time.Duration(phases))
	var all quantile.Summary
	n := 0
	for _, b := range spans {
		if !within(b.first, start, end) {
			continue
		}
		_ = all.Add(b.latency().Seconds())
		if b.latency() > over {
			n++
		}
	}
	run := AdaptiveRun{P95: quantileDuration(&all, 0.95), Batches: int(all.Count()),
		Over: n, PerSecond: perSecond(finished, start, end)}

	for i := range phases {
		from := start.Add(phase * time.Duration(i))
		run.Phases = append(run.Phases, phaseFigures(spans, finished, i, from, phase))
	}
	return run
}

// phaseFigures computes the figures of phase i, from from for length.
func phaseFigures(spans []batchSpan, finished []time.Time, i int, from time.Time,
	length time.Duration) PhaseFigures {
	to := from.Add(length)
	steady := from.Add(length / 2)
	var lat quantile.Summary
	items := 0
	for _, b := range spans {
		if b.phase == i && within(b.first, steady, to) {
			_ = lat.Add(b.latency().Seconds())
			items += b.size
		}
	}
	f := PhaseFigures{SteadyP95: quantileDuration(&lat, 0.95),
		PerSecond: perSecond(finished, from, to)}
	if n := lat.Count(); n > 0 {
		f.MeanSize = float64(items) / float64(n)
	}
	return f
}

// within reports whether t is in [from, to).
func within(t, from, to time.Time) bool { return !t.Before(from) && t.Before(to) }

// perSecond is the rate of the times in [from, to).
func perSecond(times []time.Time, from, to time.Time) float64 {
	n := 0
	for _, t := range times {
		if within(t, from, to) {
			n++
		}
	}
	return float64(n) / to.Sub(from).Seconds()
}

// quantileDuration is s's q-quantile of seconds as a duration, or zero
// when s is empty.
func quantileDuration(s *quantile.Summary, q float64) time.Duration {
	if s.Count() == 0 {
		return 0
	}
	return time.Duration(math.Round(s.Quantile(q) * float64(time.Second)))
}
