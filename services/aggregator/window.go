package aggregator

import (
	"math"
	"time"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Cache statuses a timing may carry besides "ok" and "error".
const (
	statusHit  = "hit"
	statusMiss = "miss"
)

// sample is one event placed in a window: a timing with its duration, or a
// resource reading, which is only counted.
type sample struct {
	at     time.Time
	ms     float64
	status string
	timing bool
}

// bucket holds the samples whose time falls in one resolution step.
type bucket struct {
	// idx is the step number, start/resolution since the Unix epoch. A
	// ring slot whose idx differs from the one sought is stale.
	idx    int64
	n      int64
	lat    quantile.Summary
	errors int64
	hits   int64
	misses int64
}

func (b *bucket) reset(idx int64) {
	b.idx = idx
	b.n, b.errors, b.hits, b.misses = 0, 0, 0, 0
	b.lat.Reset()
}

// figures are a window's buckets merged.
type figures struct {
	n, errors, hits, misses int64
	// lat summarises the timings' durations in ms.
	lat quantile.Summary
	// active is the part of the window since the group's first sample,
	// the divisor of the rate.
	active time.Duration
}

// window is a ring of buckets aligned to wall-clock multiples of res. It
// accepts samples from the oldest bucket still in the window up to
// maxFuture ahead of now, and reads the complete buckets before an end.
// It is not safe for concurrent use.
type window struct {
	res       time.Duration
	size      time.Duration
	maxFuture time.Duration
	span      int64 // buckets in size
	ring      []bucket

	// first is the idx of the earliest bucket that ever held a sample.
	first    int64
	hasFirst bool
}

// newWindow returns an empty window of size, a multiple of res.
func newWindow(size, res, maxFuture time.Duration) *window {
	span := int64(size / res)
	ahead := int64((maxFuture + res - 1) / res)

	// Every idx from now-span to now+ahead must own a slot of its own.
	ring := make([]bucket, span+ahead+1)
	for i := range ring {
		ring[i].idx = math.MinInt64
	}
	return &window{res: res, size: size, maxFuture: maxFuture, span: span, ring: ring}
}

// index is the step number of t.
func (w *window) index(t time.Time) int64 {
	n, r := t.UnixNano(), int64(w.res)
	q := n / r
	if n%r < 0 {
		q--
	}
	return q
}

func (w *window) slot(idx int64) *bucket {
	n := int64(len(w.ring))
	return &w.ring[((idx%n)+n)%n]
}

// accepts reports whether a sample at t, arriving at now, belongs in the
// window: not before the oldest bucket a snapshot can still read, and
// not later than now plus maxFuture.
func (w *window) accepts(t, now time.Time) bool {
	oldest := now.Truncate(w.res).Add(-w.size)
	return !t.Before(oldest) && !t.After(now.Add(w.maxFuture))
}

// add places s in its bucket and reports whether it was accepted.
func (w *window) add(s sample, now time.Time) bool {
	if !w.accepts(s.at, now) {
		return false
	}
	idx := w.index(s.at)
	b := w.slot(idx)
	if b.idx != idx {
		b.reset(idx)
	}

	b.n++
	if s.timing {
		_ = b.lat.Add(s.ms) // finite: callers pass a converted Duration
	}
	switch s.status {
	case events.TimingError:
		b.errors++
	case statusHit:
		b.hits++
	case statusMiss:
		b.misses++
	}
	if !w.hasFirst || idx < w.first {
		w.first, w.hasFirst = idx, true
	}
	return true
}

// read merges the buckets in [end-size, end), end truncated to res.
func (w *window) read(end time.Time) figures {
	e := w.index(end.Truncate(w.res))
	var f figures
	for idx := e - w.span; idx < e; idx++ {
		b := w.slot(idx)
		if b.idx != idx || b.n == 0 {
			continue
		}
		f.n += b.n
		f.errors += b.errors
		f.hits += b.hits
		f.misses += b.misses
		f.lat.Merge(&b.lat)
	}

	if w.hasFirst && w.first < e {
		from := max(w.first, e-w.span)
		f.active = time.Duration(e-from) * w.res
	}
	return f
}
