package aggregator

import (
	"cmp"
	"slices"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// groupKey identifies a group.
type groupKey struct{ service, op string }

// outcome is what became of a sample.
type outcome int

const (
	applied  outcome = iota
	late             // its window was final when the stream stored it
	future           // its time lay too far past the time it was stored
	rejected         // bad input of a known group
	foreign          // another partition's group
)

// sample is one input on the push path: a duration, a producer's summary
// of durations, a resource reading, or bad input of a known group.
type sample struct {
	t, ts  int64 // event time and the time the stream stored it, ns
	n      int64 // samples: 1, or the summary's count
	ms     float64
	sum    *quantile.Summary
	status string
	timing bool
	res    *events.Resource
	bad    bool
}

// group is the state of one (service, op): fine buckets back to the oldest
// window that may still change or that the rolling view reads, and the
// final windows the longer views merge.
type group struct {
	key   groupKey
	fine  []bucket // by idx
	rolls []bucket // final windows by window index, the last maxRolls
	// next is the first window not yet final; started says whether one
	// was, before which next may still move back for an earlier sample.
	next    int64
	started bool
	first   int64 // earliest bucket that held a sample, for rates
	seen    int64 // stream time of the latest sample, ns
	total   int64
	late    int64
	future  int64
	reject  int64
	cache   bool
	res     *resources
	views   []events.Figures // the longer views as of the last final
	// packGen changes whenever a fine bucket is packed, unpacked or
	// dropped; rolling caches the rolling view's packed part under it.
	packGen int64
	rolling *rollingPart
}

// rollingPart is the merge of the packed buckets of the rolling view from
// bucket lo, valid while the group's packGen is gen. Packed buckets change
// only when the view slides or a bucket is packed or reopened, so a flush
// decodes this one summary instead of each bucket again. It is packed
// too: a sketch of every bin the view holds.
type rollingPart struct {
	lo, gen int64
	counts
	lat []byte
}

// newGroup starts the group k with sample s. Its first window is that of
// s, or when s will not be applied, the first window still open.
func newGroup(k groupKey, s *sample, ly *layout, finalWM int64) *group {
	first := ly.bucketOf(s.t)
	next := ly.windowOf(first)
	open := max(ly.firstOpen(s.ts), ly.firstOpen(finalWM))
	if s.bad || next < open || s.t > s.ts+ly.future {
		next = open
	}
	return &group{key: k, next: next, first: first, seen: s.ts}
}

// add places s in its bucket when its window takes it; finalWM is the
// watermark up to which windows are being finalized.
func (g *group) add(s *sample, ly *layout, finalWM int64) outcome {
	g.seen = max(g.seen, s.ts)
	if s.bad {
		g.reject++
		return rejected
	}
	idx := ly.bucketOf(s.t)
	k := ly.windowOf(idx)
	switch {
	case s.t > s.ts+ly.future:
		g.future += s.n
		return future
	case s.ts >= ly.windowEnd(k)+ly.late, ly.windowEnd(k)+ly.late <= finalWM,
		g.started && k < g.next:
		g.late += s.n
		return late
	}

	if !g.started && k < g.next {
		g.next = k
	}
	if g.total == 0 || idx < g.first {
		g.first = idx
	}
	g.total += s.n
	g.place(idx, s)
	return applied
}

func (g *group) place(idx int64, s *sample) {
	b := g.bucket(idx)
	if b.packed != nil {
		g.packGen++ // reopened by a late sample
	}
	b.count(s.status, s.n)
	switch {
	case s.sum != nil:
		b.addSummary(s.sum)
	case s.timing:
		b.addDuration(s.ms)
	case s.res != nil:
		if g.res == nil {
			g.res = newResources()
		}
		g.res.add(s.res)
	}
	if s.status == statusHit || s.status == statusMiss {
		g.cache = true
	}
}

// bucket returns the bucket idx, inserting it in order when missing. The
// newest bucket is the usual one.
func (g *group) bucket(idx int64) *bucket {
	if n := len(g.fine); n > 0 && g.fine[n-1].idx == idx {
		return &g.fine[n-1]
	}
	i, found := slices.BinarySearchFunc(g.fine, idx, func(b bucket, idx int64) int {
		return cmp.Compare(b.idx, idx)
	})
	if !found {
		g.fine = slices.Insert(g.fine, i, bucket{idx: idx})
	}
	return &g.fine[i]
}

// finalize closes every window final by watermark wm, oldest first, and
// hands each final snapshot to emit. A group idle for the idle expiry
// closes no window past it.
func (g *group) finalize(ly *layout, wm int64, emit func(events.Snapshot)) {
	for ly.windowEnd(g.next)+ly.late <= wm && !g.idle(ly) {
		emit(g.close(ly, g.next))
		g.next++
		g.started = true
	}
}

// idle reports whether every window up to the idle expiry is final, so
// that the group can go.
func (g *group) idle(ly *layout) bool {
	return ly.windowStart(g.next) >= g.seen+ly.idle
}

// close rolls window k up, refreshes the longer views and returns the
// window's final snapshot.
func (g *group) close(ly *layout, k int64) events.Snapshot {
	var m merged
	for i := range g.fine {
		if ly.windowOf(g.fine[i].idx) == k {
			m.add(&g.fine[i], ly.zip)
		}
	}
	start, end := ly.windowStart(k), ly.windowEnd(k)
	snap := g.snapshot(m.figures(start, end, ly.bucketStart(g.first), end, g.cache), start)

	g.roll(ly, k, &m)
	g.views = g.longViews(ly, k)
	snap.Rollups = g.views
	return snap
}

// roll keeps window k's merged durations for the longer views.
func (g *group) roll(ly *layout, k int64, m *merged) {
	r := bucket{idx: k, counts: m.counts}
	if m.lat.Count() > 0 {
		lat := m.lat
		r.lat = &lat
	}
	g.rolls = append(g.rolls, r)
	g.rolls = slices.DeleteFunc(g.rolls, func(b bucket) bool { return b.idx <= k-ly.maxRolls })
	foldSuffix(g.rolls, func(*bucket) bool { return true })
	for i := range g.rolls {
		g.rolls[i].zip(ly.zip)
	}
}

// longViews merges the last final windows into each longer view ending
// with window k.
func (g *group) longViews(ly *layout, k int64) []events.Figures {
	if len(ly.views) == 0 {
		return nil
	}
	views := make([]events.Figures, 0, len(ly.views))
	for _, n := range ly.views {
		var m merged
		for i := range g.rolls {
			if g.rolls[i].idx > k-n {
				m.add(&g.rolls[i], ly.zip)
			}
		}
		start, end := ly.windowStart(k-n+1), ly.windowEnd(k)
		views = append(views, m.figures(start, end, ly.bucketStart(g.first), end, g.cache))
	}
	return views
}

// partial is the live snapshot at wall time now: the final window's width
// of buckets up to the current one.
func (g *group) partial(ly *layout, now int64) events.Snapshot {
	cur := ly.bucketOf(now)
	lo := cur + 1 - ly.perWin
	packed := g.rollingPacked(ly, lo, cur)
	m := merged{counts: packed.counts}
	if packed.lat != nil {
		_ = m.lat.UnmarshalBinary(packed.lat) // our own encoding
	}
	for i := range g.fine {
		if b := &g.fine[i]; b.idx >= lo && b.idx <= cur && b.packed == nil {
			m.add(b, ly.zip)
		}
	}
	start, end := ly.bucketStart(lo), ly.bucketEnd(cur)
	snap := g.snapshot(m.figures(start, end, ly.bucketStart(g.first), now, g.cache), start)
	snap.Partial = true
	snap.Rollups = g.views
	return snap
}

// rollingPacked returns the merge of the packed buckets from lo to cur,
// from the cache when it is still valid.
func (g *group) rollingPacked(ly *layout, lo, cur int64) *rollingPart {
	if r := g.rolling; r != nil && r.lo == lo && r.gen == g.packGen {
		return r
	}
	var m merged
	for i := range g.fine {
		if b := &g.fine[i]; b.idx >= lo && b.idx <= cur && b.packed != nil {
			m.add(b, ly.zip)
		}
	}
	r := &rollingPart{lo: lo, gen: g.packGen, counts: m.counts}
	if m.lat.Count() > 0 {
		r.lat, _ = m.lat.MarshalBinary()
	}
	g.rolling = r
	return r
}

// snapshot wraps f with the group's identity and counters.
func (g *group) snapshot(f events.Figures, resSince int64) events.Snapshot {
	snap := events.Snapshot{
		Service: g.key.service, Op: g.key.op, Figures: f,
		Total: g.total, Dropped: g.late + g.future, Late: g.late, Future: g.future,
		Rejected: g.reject,
	}
	if g.res != nil {
		snap.Resource = g.res.figures(resSince)
	}
	return snap
}

// compact folds and packs the buckets no view needs exact and that have
// ended by wall time now, and forgets the buckets that are final and out
// of the rolling view. A late sample may open a packed bucket again; the
// next flush packs it back.
func (g *group) compact(ly *layout, now int64) {
	cur := ly.bucketOf(now)
	n := len(g.fine)
	g.fine = slices.DeleteFunc(g.fine, func(b bucket) bool {
		return ly.windowOf(b.idx) < g.next && b.idx <= cur-ly.perWin
	})
	settled := func(b *bucket) bool {
		if ly.bucketEnd(b.idx) > now {
			return false
		}
		k := ly.windowOf(b.idx)
		return k < g.next || g.windowCount(ly, k) > quantile.ExactLimit
	}
	// Future buckets are in no view yet, so they do not count.
	past, _ := slices.BinarySearchFunc(g.fine, cur+1, func(b bucket, idx int64) int {
		return cmp.Compare(b.idx, idx)
	})
	if foldSuffix(g.fine[:past], settled) > 0 || len(g.fine) != n {
		g.packGen++
	}
}

// windowCount is the number of samples in window k's fine buckets.
func (g *group) windowCount(ly *layout, k int64) int64 {
	var n int64
	for i := range g.fine {
		if ly.windowOf(g.fine[i].idx) == k {
			n += g.fine[i].n
		}
	}
	return n
}

// foldSuffix packs the buckets that may be packed (ok), newest first, and
// folds those among them that no view needs exact: a view is a run of
// buckets up to the newest, so a bucket must stay exact while it and the
// newer ones hold at most quantile.ExactLimit samples between them.
// It returns how many buckets it packed.
func foldSuffix(bs []bucket, ok func(*bucket) bool) int {
	var suffix int64
	packed := 0
	for i := len(bs) - 1; i >= 0; i-- {
		b := &bs[i]
		suffix += b.n
		if b.lat == nil || !ok(b) {
			continue
		}
		if b.exact() && suffix > quantile.ExactLimit {
			b.lat.Fold()
		}
		if b.pack(); b.lat == nil {
			packed++
		}
	}
	return packed
}
