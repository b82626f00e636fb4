package aggregator

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// maxGroupBytes is the memory budget of one group, all windows together.
const maxGroupBytes = 64 << 10

// heapBytes is the live heap after two collections.
func heapBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// rssBytes is the process's resident set, or 0 where /proc is missing.
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			fmt.Sscan(rest, &kb)
			return kb << 10
		}
	}
	return 0
}

// feeder fills groups with lognormal durations at a rate, either one
// sample at a time or as producers do, one summary per 250 ms.
type feeder struct {
	rate   int // samples per second per group
	deltas []*quantile.Summary
	values []float64
}

func newFeeder(rate int, batched bool) *feeder {
	f := &feeder{rate: rate, values: lognormal(11, 1<<16)}
	if !batched {
		return f
	}
	for i := range 16 {
		var s quantile.Summary
		for _, v := range lognormal(uint64(100+i), rate/4) {
			_ = s.Add(v)
		}
		f.deltas = append(f.deltas, &s)
	}
	return f
}

// fill feeds one second starting at t to every group of tab.
func (f *feeder) fill(tab *table, groups int, t int64, i *int) {
	for g := range groups {
		k := groupKey{"svc", fmt.Sprintf("op%d", g)}
		if f.deltas != nil {
			for q := range 4 {
				d := f.deltas[(*i+q)%len(f.deltas)]
				tq := t + int64(q)*int64(250*time.Millisecond)
				tab.record(k, &sample{t: tq, ts: tq, n: d.Count(), sum: d, timing: true})
			}
			*i += 4
			continue
		}
		for n := range f.rate {
			tn := t + int64(n)*int64(time.Second)/int64(f.rate)
			tab.record(k, &sample{t: tn, ts: tn, n: 1, ms: f.values[*i%len(f.values)],
				timing: true})
			*i++
		}
	}
}

// TestMemoryPerGroup fills groups with lognormal durations over all the
// buckets of the largest default window and measures the live heap per
// group: it must stay within 64 KiB.
func TestMemoryPerGroup(t *testing.T) {
	if raceEnabled {
		t.Skip("memory is measured without the race detector, which slows it tenfold")
	}
	tests := []struct {
		name    string
		rate    int
		batched bool
	}{
		{"16 per second, windows exact", 16, false},
		{"100 per second, buckets exact", 100, false},
		{"1,000 per second, batched", 1000, true},
		{"100,000 per second, batched", 100_000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := memoryPerGroup(t, newFeeder(tt.rate, tt.batched), 20)
			t.Logf("%s: %d bytes per group (%.1f KiB)", tt.name, got, float64(got)/1024)
			if got > maxGroupBytes {
				t.Errorf("memory per group = %d bytes, want at most %d", got, maxGroupBytes)
			}
		})
	}
}

// memoryPerGroup runs 16 minutes of samples through groups with the
// default windows, flushing every second, and returns the heap per group.
// It stops 3 s into a bucket, while the one before still takes late
// samples and is held unpacked.
func memoryPerGroup(t *testing.T, f *feeder, groups int) uint64 {
	t.Helper()
	cfg := Config{}.withDefaults()
	before := heapBytes()
	tab := newTable(cfg)
	start := time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC).UnixNano()
	var i int
	for s := range 16*60 + 3 {
		now := start + int64(s)*int64(time.Second)
		f.fill(tab, groups, now, &i)
		tab.flush(now, now, func(events.Snapshot) {})
	}
	after := heapBytes()
	if n := tab.len(); n != groups {
		t.Fatalf("groups = %d, want %d", n, groups)
	}
	runtime.KeepAlive(tab)
	runtime.KeepAlive(f) // alive on both sides of the measure
	return (after - before) / uint64(groups)
}

// TestFlood sends a million distinct op names at the table: the group
// count stays at the cap, the overflow group counts the rest, and the real
// groups keep their own figures.
func TestFlood(t *testing.T) {
	const flood = 1_000_000
	cfg := unitConfig()
	cfg.MaxGroups = DefaultMaxGroups
	h := newHarness(t, cfg)
	rssBefore, heapBefore := rssBytes(), heapBytes()

	started := time.Now()
	for i := range flood {
		if i%10_000 == 0 {
			h.addOnTime("real", at(sec), 1, 2, 3, 4)
		}
		h.add(fmt.Sprintf("flood-%d", i), 50, at(sec), at(sec))
	}
	took := time.Since(started)
	h.flush(at(12 * sec))
	heapAfter, rssAfter := heapBytes(), rssBytes()
	t.Logf("flood of %d names in %s: %d groups, heap +%.1f MiB, rss %.1f -> %.1f MiB",
		flood, took, h.tab.len(), mib(heapAfter-heapBefore), mib(rssBefore), mib(rssAfter))

	if n := h.tab.len(); n != DefaultMaxGroups {
		t.Errorf("groups = %d, want the cap %d", n, DefaultMaxGroups)
	}
	// "real" came first; the flood took the other places but one.
	wantOverflow := int64(flood - (DefaultMaxGroups - 2))
	if got := h.final(Overflow, at(10*sec)); got.Count != wantOverflow {
		t.Errorf("overflow count = %d, want %d", got.Count, wantOverflow)
	}
	real := h.final("real", at(10*sec))
	if real.Count != 400 || *real.P50Ms != 2 || *real.MaxMs != 4 {
		t.Errorf("real group count %d p50 %v max %v, want 400, 2, 4",
			real.Count, *real.P50Ms, *real.MaxMs)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// BenchmarkRecord measures the push path per sample: group lookup and
// summary update, on 1,000 groups.
func BenchmarkRecord(b *testing.B) {
	const groups = 1000
	tab := newTable(Config{}.withDefaults())
	keys := make([]groupKey, groups)
	for i := range keys {
		keys[i] = groupKey{"agent", fmt.Sprintf("op-%d", i)}
	}
	vals := lognormal(5, 4096)
	now := time.Now().UnixNano()
	for i := range 2 * groups * quantile.ExactLimit { // past the exact limit
		tab.record(keys[i%groups], &sample{t: now, ts: now, n: 1, ms: vals[i%4096], timing: true})
	}

	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s := sample{t: now, ts: now, n: 1, ms: vals[i&4095], timing: true}
		tab.record(keys[i%groups], &s)
		i++
	}
}

// BenchmarkFlush measures one flush of 1,000 busy groups: partials of the
// rolling window, compaction and finals.
func BenchmarkFlush(b *testing.B) {
	const groups = 1000
	tab := newTable(Config{}.withDefaults())
	f := newFeeder(10_000, true)
	start := time.Now().Truncate(time.Minute).UnixNano()
	var i int
	for s := range 120 {
		now := start + int64(s)*int64(time.Second)
		f.fill(tab, groups, now, &i)
		tab.flush(now, now, func(events.Snapshot) {})
	}

	now := start + 120*int64(time.Second)
	for b.Loop() {
		b.StopTimer()
		f.fill(tab, groups, now, &i)
		b.StartTimer()
		tab.flush(now, now, func(events.Snapshot) {})
		now += int64(time.Second)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/groups, "µs/group")
}
