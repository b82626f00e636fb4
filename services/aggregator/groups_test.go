package aggregator

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perfpipe/perfpipe/pkg/events"
)

func testTable() *table {
	return newTable(Config{
		Window: 10 * time.Second, Resolution: time.Second, MaxFuture: 5 * time.Second,
	})
}

// find returns the snapshot of (service, op), failing when it is missing.
func find(t *testing.T, snaps []events.Snapshot, service, op string) events.Snapshot {
	t.Helper()
	for _, s := range snaps {
		if s.Service == service && s.Op == op {
			return s
		}
	}
	t.Fatalf("no snapshot for %s.%s among %d", service, op, len(snaps))
	return events.Snapshot{}
}

func newTiming(service, op, status string, ms int, ts time.Time) *events.Timing {
	return &events.Timing{Service: service, Op: op, Status: status,
		Duration: time.Duration(ms) * time.Millisecond, Time: ts}
}

func TestTableStatuses(t *testing.T) {
	tab := testTable()
	now := at(time.Second)
	for _, ev := range []*events.Timing{
		newTiming("agent", "cache", statusHit, 1, at(0)),
		newTiming("agent", "cache", statusHit, 1, at(0)),
		newTiming("agent", "cache", statusMiss, 3, at(0)),
		newTiming("agent", "run", events.TimingOK, 10, at(0)),
		newTiming("agent", "run", events.TimingError, 20, at(0)),
	} {
		if got := tab.recordTiming(ev, now); got != applied {
			t.Fatalf("record %s.%s = %v, want applied", ev.Service, ev.Op, got)
		}
	}

	snaps := tab.snapshots(now, time.Time{})
	if len(snaps) != 2 || snaps[0].Op != "cache" || snaps[1].Op != "run" {
		t.Fatalf("snapshots = %d, want agent.cache then agent.run", len(snaps))
	}
	cacheSnap, run := snaps[0], snaps[1]
	if diff := cmp.Diff(&events.CacheFigures{Hits: 2, Misses: 1}, cacheSnap.Cache); diff != "" {
		t.Errorf("cache figures (-want +got):\n%s", diff)
	}
	if run.Cache != nil {
		t.Errorf("run cache = %+v, want nil for a group without hits or misses", run.Cache)
	}
	if run.Errors != 1 || run.Count != 2 || run.Total != 2 || run.MaxMs != 20 {
		t.Errorf("run errors %d count %d total %d max %v, want 1, 2, 2, 20",
			run.Errors, run.Count, run.Total, run.MaxMs)
	}
	wantStart, wantEnd := at(-9*time.Second), at(time.Second)
	if !run.Start.Equal(wantStart) || !run.End.Equal(wantEnd) || run.Window.Std() != 10*time.Second {
		t.Errorf("run window %s from %s to %s, want 10s from %s to %s",
			run.Window, run.Start, run.End, wantStart, wantEnd)
	}
}

func TestTableDropped(t *testing.T) {
	tab := testTable()
	now := at(time.Minute)
	tab.recordTiming(newTiming("a", "b", "ok", 5, now.Add(-time.Second)), now)
	for name, ts := range map[string]time.Time{"old": at(0), "future": now.Add(time.Hour)} {
		if got := tab.recordTiming(newTiming("a", "b", "ok", 500, ts), now); got != dropped {
			t.Errorf("%s timing = %v, want dropped", name, got)
		}
	}

	got := find(t, tab.snapshots(now, time.Time{}), "a", "b")
	if got.Dropped != 2 || got.Total != 1 || got.Count != 1 || got.MaxMs != 5 {
		t.Errorf("dropped %d total %d count %d max %v, want 2, 1, 1, 5",
			got.Dropped, got.Total, got.Count, got.MaxMs)
	}
}

func TestTableResources(t *testing.T) {
	tab := testTable()
	now := at(5 * time.Second)
	reading := func(host, service string, pid int32, cpu float64, rss uint64,
		ts time.Time) *events.Resource {
		return &events.Resource{Host: host, Service: service, PID: pid, Time: ts,
			CPUPercent: cpu, RSSBytes: rss, HostCPUPercent: 40, HostMemUsedPerc: 50}
	}
	for _, ev := range []*events.Resource{
		reading("h1", "agent", 1, 10, 100, at(0)),
		reading("h1", "agent", 2, 20, 200, at(time.Second)),
		reading("h1", "agent", 1, 15, 150, at(2*time.Second)),
		reading("h1", "agent", 1, 99, 999, at(time.Second)), // older than the one held
		reading("h1", "batcher", 3, 5, 50, at(time.Second)),
		reading("h1", "host", 0, 0, 0, at(3*time.Second)),
	} {
		tab.recordResource(ev, now)
	}
	snaps := tab.snapshots(now, time.Time{})

	tests := []struct {
		service string
		count   int64
		want    events.ResourceFigures
	}{
		{"agent", 4, events.ResourceFigures{CPUPercent: 35, RSSBytes: 350,
			HostCPUPercent: 40, HostMemUsedPerc: 50, Processes: 2}},
		{"batcher", 1, events.ResourceFigures{CPUPercent: 5, RSSBytes: 50,
			HostCPUPercent: 40, HostMemUsedPerc: 50, Processes: 1}},
		{"host", 6, events.ResourceFigures{CPUPercent: 40, RSSBytes: 400,
			HostCPUPercent: 40, HostMemUsedPerc: 50, Processes: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			got := find(t, snaps, tt.service, resourceOp)
			if got.Count != tt.count {
				t.Errorf("count = %d, want %d", got.Count, tt.count)
			}
			if got.P95Ms != 0 || got.Cache != nil {
				t.Errorf("p95 %v cache %v, want no latency or cache figures", got.P95Ms, got.Cache)
			}
			if diff := cmp.Diff(&tt.want, got.Resource); diff != "" {
				t.Errorf("resource figures (-want +got):\n%s", diff)
			}
		})
	}

	// Once the readings leave the window, the processes are forgotten.
	later := at(time.Minute)
	got := find(t, tab.snapshots(later, time.Time{}), "agent", resourceOp)
	if diff := cmp.Diff(&events.ResourceFigures{}, got.Resource); got.Count != 0 || diff != "" {
		t.Errorf("aged out: count %d, resource (-want +got):\n%s", got.Count, diff)
	}
}

func TestTableIdleExpiry(t *testing.T) {
	tab := testTable()
	tab.recordTiming(newTiming("a", "b", "ok", 1, at(0)), at(0))

	if n := len(tab.snapshots(at(time.Second), at(0))); n != 1 {
		t.Fatalf("groups while active = %d, want 1", n)
	}
	if n := len(tab.snapshots(at(2*time.Second), at(time.Second))); n != 0 {
		t.Errorf("groups after idle expiry = %d, want 0", n)
	}
}

func TestMatches(t *testing.T) {
	tests := []struct {
		filter, service, op string
		want                bool
	}{
		{"", "agent", "http", true},
		{"agent", "agent", "http", true},
		{"agent", "agents", "http", false},
		{"agent.", "agent", "http", true},
		{"agent.ht", "agent", "http", true},
		{"agent.http", "agent", "http", true},
		{"agent.http", "agent", "https", true},
		{"agent.run", "agent", "http", false},
		{"http", "agent", "http", false},
	}
	for _, tt := range tests {
		if got := matches(tt.filter, tt.service, tt.op); got != tt.want {
			t.Errorf("matches(%q, %s.%s) = %v, want %v",
				tt.filter, tt.service, tt.op, got, tt.want)
		}
	}
}
