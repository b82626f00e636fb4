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

// Times are held as Unix nanoseconds, clamped to a range where adding a
// window or a lateness cannot overflow.
const (
	minNanos = math.MinInt64 / 2
	maxNanos = math.MaxInt64 / 2
)

// nanos is t in Unix nanoseconds, clamped to [minNanos, maxNanos].
func nanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, minNanos)):
		return minNanos
	case t.After(time.Unix(0, maxNanos)):
		return maxNanos
	}
	return t.UnixNano()
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// layout is the time arithmetic every group shares. Bucket idx covers
// [idx*res, (idx+1)*res); final window k covers [k*win, (k+1)*win).
type layout struct {
	res, win int64 // bucket and final window widths, ns
	perWin   int64 // buckets per final window
	views    []int64
	maxRolls int64 // final windows kept for the views
	late     int64 // allowed lateness, ns
	future   int64 // max future, ns
	idle     int64 // idle expiry, ns
	zip      *zipper
}

func newLayout(cfg Config) layout {
	l := layout{
		res: int64(cfg.Resolution), win: int64(cfg.Windows[0]),
		late: int64(cfg.AllowedLateness), future: int64(cfg.MaxFuture),
		idle: int64(cfg.IdleExpiry), maxRolls: 1, zip: &zipper{},
	}
	l.perWin = l.win / l.res
	for _, w := range cfg.Windows[1:] {
		l.views = append(l.views, int64(w)/l.win)
		l.maxRolls = max(l.maxRolls, int64(w)/l.win)
	}
	return l
}

func (l *layout) bucketOf(t int64) int64    { return floorDiv(t, l.res) }
func (l *layout) windowOf(idx int64) int64  { return floorDiv(idx, l.perWin) }
func (l *layout) windowStart(k int64) int64 { return k * l.win }
func (l *layout) windowEnd(k int64) int64   { return (k + 1) * l.win }
func (l *layout) bucketEnd(idx int64) int64 { return (idx + 1) * l.res }

// firstOpen is the first window that takes samples the stream stores at
// ts: the first whose end plus the lateness lies after ts.
func (l *layout) firstOpen(ts int64) int64    { return floorDiv(ts-l.late, l.win) }
func (l *layout) bucketStart(idx int64) int64 { return idx * l.res }

// counts are the plain counters of a bucket.
type counts struct {
	n, errors, hits, misses int64
}

func (c *counts) add(o counts) {
	c.n += o.n
	c.errors += o.errors
	c.hits += o.hits
	c.misses += o.misses
}

// count adds n samples of status.
func (c *counts) count(status string, n int64) {
	c.n += n
	switch status {
	case events.TimingError:
		c.errors += n
	case statusHit:
		c.hits += n
	case statusMiss:
		c.misses += n
	}
}

// bucket holds the samples of one resolution step, or of one final window
// once rolled up. Its durations live in lat while the bucket may change or
// must stay exact; otherwise they are folded into a sketch and packed, a
// few bytes per bin instead of eight.
type bucket struct {
	idx int64
	counts
	lat    *quantile.Summary
	packed []byte
	// zipped says packed is deflated too, as for final windows kept for
	// the longer views; such a bucket never changes again.
	zipped bool
}

// addDuration adds one duration in ms, already checked to be finite.
func (b *bucket) addDuration(ms float64) {
	b.open()
	_ = b.lat.Add(ms)
}

// addSummary merges a producer's summary of durations.
func (b *bucket) addSummary(s *quantile.Summary) {
	b.open()
	b.lat.Merge(s)
}

// open makes lat ready for writes, unpacking it when packed.
func (b *bucket) open() {
	if b.lat != nil {
		return
	}
	b.lat = new(quantile.Summary)
	if b.packed != nil {
		_ = b.lat.UnmarshalBinary(b.packed) // our own encoding
		b.packed = nil
	}
}

// pack encodes a folded lat; an exact one stays as it is.
func (b *bucket) pack() {
	if b.lat == nil || b.lat.Exact() {
		return
	}
	data, err := b.lat.MarshalBinary()
	if err != nil {
		return // keep it unpacked; memory, not correctness, is at stake
	}
	b.packed, b.lat = data, nil
}

// exact reports whether the bucket keeps its durations verbatim.
func (b *bucket) exact() bool { return b.lat != nil && b.lat.Exact() }

// zip deflates a packed bucket that will not change again.
func (b *bucket) zip(z *zipper) {
	if b.packed != nil && !b.zipped {
		b.packed, b.zipped = z.zip(b.packed), true
	}
}

// mergeInto adds the bucket's durations to dst.
func (b *bucket) mergeInto(dst *quantile.Summary, z *zipper) {
	if b.lat != nil {
		dst.Merge(b.lat)
		return
	}
	data := b.packed
	if b.zipped {
		data, _ = z.unzip(data) // our own deflate; a failure leaves data short
	}
	var s quantile.Summary
	if data != nil && s.UnmarshalBinary(data) == nil {
		dst.Merge(&s)
	}
}

// merged is a set of buckets merged into one window's figures.
type merged struct {
	counts
	lat quantile.Summary
}

func (m *merged) add(b *bucket, z *zipper) {
	m.counts.add(b.counts)
	b.mergeInto(&m.lat, z)
}

// figures turns m into the wire figures of the window [start, end). The
// rate divides by the part of the window since from, and by at least
// minElapsed.
func (m *merged) figures(start, end, from, now int64, cache bool) events.Figures {
	f := events.Figures{
		Window: events.Duration(end - start),
		Start:  time.Unix(0, start).UTC(), End: time.Unix(0, end).UTC(),
		Count: m.n, Errors: m.errors,
	}
	if elapsed := min(now, end) - max(start, from); m.n > 0 {
		f.Rate = float64(m.n) / (float64(max(elapsed, minElapsed(end-start))) / 1e9)
	}
	if s := &m.lat; s.Count() > 0 {
		f.MinMs, f.MaxMs, f.MeanMs = ptr(s.Min()), ptr(s.Max()), ptr(s.Mean())
		f.P50Ms, f.P90Ms = ptr(s.Quantile(0.50)), ptr(s.Quantile(0.90))
		f.P95Ms, f.P99Ms = ptr(s.Quantile(0.95)), ptr(s.Quantile(0.99))
		f.P999Ms = ptr(s.Quantile(0.999))
	}
	if cache {
		f.Cache = &events.CacheFigures{Hits: m.hits, Misses: m.misses}
	}
	return f
}

// minElapsed keeps a rate from exploding over the first instants of a
// group: one second, or the whole window when it is shorter.
func minElapsed(window int64) int64 { return min(window, int64(time.Second)) }

func ptr(v float64) *float64 { return &v }
