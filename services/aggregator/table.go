package aggregator

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Overflow is the group that keeps the samples of the groups beyond
// Config.MaxGroups.
const Overflow = "_overflow"

var overflowKey = groupKey{Overflow, Overflow}

// shardCount spreads groups over locks so that recording and flushing
// contend on one shard at a time.
const shardCount = 16

// shard is a part of the group table under one lock.
type shard struct {
	mu     sync.Mutex
	groups map[groupKey]*group
}

// table holds this instance's groups, sharded by key. record is the push
// path; flush and capture are the flush path.
type table struct {
	ly          layout
	maxGroups   int64
	parts, part uint64
	groups      atomic.Int64 // the overflow group included
	// finalWM is the watermark of the latest flush: windows final by it
	// take no more samples.
	finalWM atomic.Int64
	shards  [shardCount]shard
}

func newTable(cfg Config) *table {
	t := &table{
		ly: newLayout(cfg), maxGroups: int64(cfg.MaxGroups),
		parts: uint64(cfg.Partitions), part: uint64(cfg.Partition),
	}
	t.finalWM.Store(minNanos)
	for i := range t.shards {
		t.shards[i].groups = map[groupKey]*group{}
	}
	return t
}

// PartitionOf is the partition, out of partitions, that keeps the group
// (service, op): FNV-1a of both names, modulo partitions.
func PartitionOf(service, op string, partitions int) int {
	if partitions <= 1 {
		return 0
	}
	return int(hashKey(groupKey{service, op}) % uint64(partitions))
}

func hashKey(k groupKey) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(k.service); i++ {
		h = (h ^ uint64(k.service[i])) * prime
	}
	h *= prime // a zero byte between the names
	for i := 0; i < len(k.op); i++ {
		h = (h ^ uint64(k.op[i])) * prime
	}
	return h
}

// record adds s to the group k, to the overflow group when k is new and
// the table full, or nowhere when another partition keeps k. overflowed
// says whether the overflow group took it.
func (t *table) record(k groupKey, s *sample) (out outcome, overflowed bool) {
	h := hashKey(k)
	if !t.ownsHash(h) {
		return foreign, false
	}
	if out, ok := t.recordIn(&t.shards[(h>>32)%shardCount], k, s, false); ok {
		return out, false
	}
	out, _ = t.recordIn(t.shardOf(overflowKey), overflowKey, s, true)
	return out, true
}

// owns reports whether this partition keeps the group k.
func (t *table) owns(k groupKey) bool { return t.ownsHash(hashKey(k)) }

func (t *table) ownsHash(h uint64) bool { return t.parts <= 1 || h%t.parts == t.part }

// recordIn adds s to the group k of sh, creating it unless the table is
// full and force is false; ok is false when it did not.
func (t *table) recordIn(sh *shard, k groupKey, s *sample, force bool) (out outcome, ok bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	g := sh.groups[k]
	if g == nil {
		if !t.reserve(force) {
			return 0, false
		}
		g = newGroup(k, s, &t.ly, t.finalWM.Load())
		sh.groups[k] = g
	}
	// Read under the shard lock: a flush that finalized this shard stored
	// its watermark before taking the lock.
	return g.add(s, &t.ly, t.finalWM.Load()), true
}

// reserve counts a new group in, keeping one place for the overflow group
// unless force.
func (t *table) reserve(force bool) bool {
	if force {
		// The overflow group is always there to take what the cap turns
		// away, even when restored groups already exceed a lowered cap.
		t.groups.Add(1)
		return true
	}
	limit := t.maxGroups - 1
	for {
		n := t.groups.Load()
		if n >= limit {
			return false
		}
		if t.groups.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (t *table) shardOf(k groupKey) *shard {
	return &t.shards[(hashKey(k)>>32)%shardCount]
}

// flush finalizes the windows final by watermark wm, handing each final
// snapshot to emit under its shard's lock; compacts the groups, removes
// the idle ones, and returns every group's partial snapshot at wall time
// now, sorted by service and op.
func (t *table) flush(wm, now int64, emit func(events.Snapshot)) []events.Snapshot {
	for {
		old := t.finalWM.Load()
		if wm <= old || t.finalWM.CompareAndSwap(old, wm) {
			break
		}
	}
	wm = t.finalWM.Load()

	var snaps []events.Snapshot
	for i := range t.shards {
		snaps = t.flushShard(&t.shards[i], snaps, wm, now, emit)
	}
	slices.SortFunc(snaps, func(a, b events.Snapshot) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Op, b.Op))
	})
	return snaps
}

func (t *table) flushShard(sh *shard, dst []events.Snapshot, wm, now int64,
	emit func(events.Snapshot)) []events.Snapshot {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for k, g := range sh.groups {
		g.finalize(&t.ly, wm, emit)
		if g.idle(&t.ly) {
			delete(sh.groups, k)
			t.groups.Add(-1)
			continue
		}
		g.compact(&t.ly, now)
		dst = append(dst, g.partial(&t.ly, now))
	}
	return dst
}

// len is the number of groups held.
func (t *table) len() int { return int(t.groups.Load()) }
