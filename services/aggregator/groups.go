package aggregator

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Group names used for resource readings.
const (
	resourceOp   = "resource"
	hostsService = "host"
)

// shardCount spreads groups over locks so that recording and flushing
// contend on one shard at a time.
const shardCount = 16

// groupKey identifies a group.
type groupKey struct{ service, op string }

// group is the state of one (service, op).
type group struct {
	key     groupKey
	win     *window
	total   int64
	dropped int64
	// cache is set once the group saw a hit or miss status.
	cache bool
	// res holds the latest resource readings, nil for a timing group.
	res      *resources
	lastSeen time.Time
}

// snapshot builds the group's snapshot for the window ending at end,
// which is aligned to the resolution.
func (g *group) snapshot(end time.Time) events.Snapshot {
	f := g.win.read(end)
	snap := events.Snapshot{
		Service: g.key.service, Op: g.key.op,
		Window: events.Duration(g.win.size), Start: end.Add(-g.win.size), End: end,
		Count: f.n, Errors: f.errors, Total: g.total, Dropped: g.dropped,
	}
	if f.active > 0 {
		snap.Rate = float64(f.n) / f.active.Seconds()
	}
	if f.lat.Count() > 0 {
		snap.MinMs, snap.MaxMs, snap.MeanMs = f.lat.Min(), f.lat.Max(), f.lat.Mean()
		snap.P50Ms = f.lat.Quantile(0.50)
		snap.P90Ms = f.lat.Quantile(0.90)
		snap.P95Ms = f.lat.Quantile(0.95)
		snap.P99Ms = f.lat.Quantile(0.99)
		snap.P999Ms = f.lat.Quantile(0.999)
	}
	if g.cache {
		snap.Cache = &events.CacheFigures{Hits: f.hits, Misses: f.misses}
	}
	if g.res != nil {
		snap.Resource = g.res.figures(snap.Start)
	}
	return snap
}

// procKey identifies a process across hosts.
type procKey struct {
	host string
	pid  int32
}

type procReading struct {
	at  time.Time
	cpu float64
	rss uint64
}

type hostReading struct {
	at       time.Time
	cpu, mem float64
}

// resources keeps the latest reading of each process and of each host.
type resources struct {
	procs map[procKey]procReading
	hosts map[string]hostReading
}

func newResources() *resources {
	return &resources{procs: map[procKey]procReading{}, hosts: map[string]hostReading{}}
}

// add keeps ev when it is newer than what is held for its process and
// host. A reading with PID 0 describes the host only.
func (r *resources) add(ev *events.Resource) {
	if h, ok := r.hosts[ev.Host]; !ok || !ev.Time.Before(h.at) {
		r.hosts[ev.Host] = hostReading{ev.Time, ev.HostCPUPercent, ev.HostMemUsedPerc}
	}
	if ev.PID == 0 {
		return
	}
	k := procKey{ev.Host, ev.PID}
	if p, ok := r.procs[k]; !ok || !ev.Time.Before(p.at) {
		r.procs[k] = procReading{ev.Time, ev.CPUPercent, ev.RSSBytes}
	}
}

// figures forgets readings older than since, then sums the processes and
// averages the hosts.
func (r *resources) figures(since time.Time) *events.ResourceFigures {
	var f events.ResourceFigures
	for k, p := range r.procs {
		if p.at.Before(since) {
			delete(r.procs, k)
			continue
		}
		f.CPUPercent += p.cpu
		f.RSSBytes += p.rss
		f.Processes++
	}
	for k, h := range r.hosts {
		if h.at.Before(since) {
			delete(r.hosts, k)
			continue
		}
		f.HostCPUPercent += h.cpu
		f.HostMemUsedPerc += h.mem
	}
	if n := float64(len(r.hosts)); n > 0 {
		f.HostCPUPercent /= n
		f.HostMemUsedPerc /= n
	}
	return &f
}

// shard is a part of the group table under one lock.
type shard struct {
	mu     sync.Mutex
	groups map[groupKey]*group
}

// table holds every group, sharded by key. The record methods are the push
// path; snapshots is the flush path.
type table struct {
	size, res, maxFuture time.Duration
	seed                 maphash.Seed
	shards               [shardCount]shard
}

func newTable(cfg Config) *table {
	t := &table{
		size: cfg.Window, res: cfg.Resolution, maxFuture: cfg.MaxFuture,
		seed: maphash.MakeSeed(),
	}
	for i := range t.shards {
		t.shards[i].groups = map[groupKey]*group{}
	}
	return t
}

// outcome is what became of one sample.
type outcome int

const (
	applied outcome = iota
	dropped
)

// recordTiming adds a validated timing to its group.
func (t *table) recordTiming(ev *events.Timing, now time.Time) outcome {
	s := sample{
		at:     ev.Time,
		ms:     float64(ev.Duration) / float64(time.Millisecond),
		status: ev.Status,
		timing: true,
	}
	return t.record(groupKey{ev.Service, ev.Op}, s, now, func(g *group) {
		if ev.Status == statusHit || ev.Status == statusMiss {
			g.cache = true
		}
	})
}

// recordResource adds a validated reading to its service's resource group
// and to the hosts' group.
func (t *table) recordResource(ev *events.Resource, now time.Time) outcome {
	s := sample{at: ev.Time}
	keep := func(g *group) {
		if g.res == nil {
			g.res = newResources()
		}
		g.res.add(ev)
	}
	out := t.record(groupKey{ev.Service, resourceOp}, s, now, keep)
	if ev.Service != hostsService {
		t.record(groupKey{hostsService, resourceOp}, s, now, keep)
	}
	return out
}

// record places s in the group of k, creating the group, and calls
// accepted on it under the shard's lock when s fits the window.
func (t *table) record(k groupKey, s sample, now time.Time, accepted func(*group)) outcome {
	sh := &t.shards[maphash.Comparable(t.seed, k)%shardCount]
	sh.mu.Lock()
	defer sh.mu.Unlock()

	g := sh.groups[k]
	if g == nil {
		g = &group{key: k, win: newWindow(t.size, t.res, t.maxFuture), lastSeen: now}
		sh.groups[k] = g
	}
	// A group that only receives dropped samples stays, so that the drops
	// show in its snapshots.
	g.lastSeen = now
	if !g.win.add(s, now) {
		g.dropped++
		return dropped
	}
	g.total++
	accepted(g)
	return applied
}

// snapshots removes the groups idle since before idleBefore and returns
// the snapshot of every other group for the window ending at end, sorted
// by service and op.
func (t *table) snapshots(end, idleBefore time.Time) []events.Snapshot {
	end = end.Truncate(t.res)
	var snaps []events.Snapshot
	for i := range t.shards {
		snaps = t.shards[i].snapshots(snaps, end, idleBefore)
	}
	slices.SortFunc(snaps, func(a, b events.Snapshot) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Op, b.Op))
	})
	return snaps
}

func (sh *shard) snapshots(dst []events.Snapshot, end, idleBefore time.Time) []events.Snapshot {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for k, g := range sh.groups {
		if g.lastSeen.Before(idleBefore) {
			delete(sh.groups, k)
			continue
		}
		dst = append(dst, g.snapshot(end))
	}
	return dst
}
