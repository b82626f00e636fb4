package aggregator

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/internal/timing"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fastConfig keeps integration tests quick: 100 ms buckets and flushes.
var fastConfig = Config{
	Window:          30 * time.Second,
	Resolution:      100 * time.Millisecond,
	PublishInterval: 100 * time.Millisecond,
}

// start runs a service until the test ends and checks that Run returns nil
// soon after its context is cancelled.
func start(t *testing.T, conn *bus.Conn, store cache.Store) *Service {
	t.Helper()
	svc, err := New(conn, store, fastConfig, testenv.Logger(t))
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	testenv.Run(t, svc, 10*time.Second)
	return svc
}

// watcher records every snapshot published on NATS.
type watcher struct {
	mu   sync.Mutex
	raw  map[string][]byte // by subject and end
	last map[string]events.Snapshot
}

func watch(t *testing.T, conn *bus.Conn) *watcher {
	t.Helper()
	w := &watcher{raw: map[string][]byte{}, last: map[string]events.Snapshot{}}
	sub, err := conn.NC.Subscribe(events.SnapshotAll, func(m *nats.Msg) {
		var snap events.Snapshot
		if err := events.Unmarshal(m.Data, &snap); err != nil {
			t.Errorf("snapshot on %s: %v", m.Subject, err)
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.raw[endKey(m.Subject, snap.End)] = m.Data
		w.last[m.Subject] = snap
	})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

func endKey(subject string, end time.Time) string {
	return fmt.Sprintf("%s@%d", subject, end.UnixNano())
}

// latest returns the last snapshot of (service, op) received.
func (w *watcher) latest(service, op string) (events.Snapshot, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.last[events.SnapshotSubject(service, op)]
	return s, ok
}

// published returns the bytes published for (service, op) at end.
func (w *watcher) published(service, op string, end time.Time) ([]byte, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.raw[endKey(events.SnapshotSubject(service, op), end)]
	return b, ok
}

// waitSnapshot waits for a snapshot of (service, op) that satisfies cond.
func (w *watcher) waitSnapshot(t *testing.T, service, op string,
	cond func(events.Snapshot) bool) events.Snapshot {
	t.Helper()
	var got events.Snapshot
	testenv.WaitFor(t, 15*time.Second, "snapshot of "+service+"."+op, func() bool {
		s, ok := w.latest(service, op)
		got = s
		return ok && cond(s)
	})
	return got
}

// checkStored waits until the stored snapshot of (service, op) is one that
// was published, then checks that the bytes and the decoded snapshots are
// the same.
func checkStored(t *testing.T, w *watcher, get func(key string) []byte, service, op string) {
	t.Helper()
	var stored, sent []byte
	testenv.WaitFor(t, 10*time.Second, "stored snapshot also seen on nats", func() bool {
		stored = get(cache.SnapshotKey(service, op))
		var snap events.Snapshot
		if stored == nil || events.Unmarshal(stored, &snap) != nil {
			return false
		}
		var ok bool
		sent, ok = w.published(service, op, snap.End)
		return ok
	})

	if !bytes.Equal(stored, sent) {
		t.Errorf("stored bytes differ from the published ones")
	}
	var fromStore, fromNATS events.Snapshot
	if err := events.Unmarshal(stored, &fromStore); err != nil {
		t.Fatalf("decode stored: %v", err)
	}
	if err := events.Unmarshal(sent, &fromNATS); err != nil {
		t.Fatalf("decode published: %v", err)
	}
	if diff := cmp.Diff(fromNATS, fromStore); diff != "" {
		t.Errorf("stored snapshot differs from published (-nats +store):\n%s", diff)
	}
	if fromStore.Count == 0 {
		t.Errorf("stored snapshot has count 0, want the group's samples")
	}
}

// durations returns n lognormal durations and the nearest-rank q-quantile
// of them in ms.
func durations(n int, q float64) ([]time.Duration, float64) {
	rng := rand.New(rand.NewPCG(3, 5))
	ds := make([]time.Duration, n)
	ms := make([]float64, n)
	for i := range ds {
		ds[i] = time.Duration(math.Exp(rng.NormFloat64()+2) * float64(time.Millisecond))
		ms[i] = float64(ds[i]) / float64(time.Millisecond)
	}
	slices.Sort(ms)
	return ds, ms[int(math.Ceil(q*float64(n)))-1]
}

func TestAggregatorRedis(t *testing.T) {
	ctx := context.Background()
	conn := testenv.Conn(t, testenv.NATS(t))
	redisURL := testenv.Redis(t)
	store, err := cache.NewRedis(ctx, redisURL)
	if err != nil {
		t.Fatalf("redis store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	opts, _ := redis.ParseURL(redisURL)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })

	w := watch(t, conn)
	svc := start(t, conn, store)

	// 2,000 timings of agent.http through the recorder every service uses.
	const n = 2000
	ds, wantP95 := durations(n, 0.95)
	rec := timing.NewRecorder(conn, "agent", testenv.Logger(t))
	for _, d := range ds {
		rec.Record("http", events.TimingOK, d)
	}
	flushCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec.Flush(flushCtx)

	got := w.waitSnapshot(t, "agent", "http", func(s events.Snapshot) bool {
		return s.Count == n
	})
	p95 := got.P95Ms
	if !within(p95, wantP95, 0.01) {
		t.Errorf("p95 = %v ms, want %v within 1%%", p95, wantP95)
	}

	t.Run("stored equals published", func(t *testing.T) {
		checkStored(t, w, func(key string) []byte {
			b, err := rdb.Get(ctx, key).Bytes()
			if err != nil {
				return nil
			}
			return b
		}, "agent", "http")
	})

	t.Run("json timing", func(t *testing.T) {
		body := fmt.Sprintf(`{"service":"shell","op":"cmd","duration":5000000,"time":%q}`,
			time.Now().Format(time.RFC3339Nano))
		if err := conn.NC.Publish(events.TimingSubject("shell", "cmd"), []byte(body)); err != nil {
			t.Fatalf("publish json: %v", err)
		}
		got := w.waitSnapshot(t, "shell", "cmd", func(s events.Snapshot) bool {
			return s.Count == 1
		})
		if got.P50Ms != 5 || got.MaxMs != 5 {
			t.Errorf("json timing p50 %v max %v, want 5 ms", got.P50Ms, got.MaxMs)
		}
	})

	t.Run("bad timing rejected", func(t *testing.T) {
		before := svc.Stats().Rejected
		bad := &events.Timing{Service: "agent", Op: "http", Duration: -time.Second,
			Time: time.Now()}
		if err := conn.Publish(ctx, events.TimingSubject("agent", "http"), bad, ""); err != nil {
			t.Fatalf("publish negative: %v", err)
		}
		garbage := []byte{0xc1, 0x00}
		if err := conn.NC.Publish(events.TimingSubject("agent", "http"), garbage); err != nil {
			t.Fatalf("publish garbage: %v", err)
		}
		testenv.WaitFor(t, 10*time.Second, "two rejections", func() bool {
			return svc.Stats().Rejected == before+2
		})

		// A snapshot flushed after the rejections has the same figures.
		after := time.Now().Add(fastConfig.Resolution)
		got := w.waitSnapshot(t, "agent", "http", func(s events.Snapshot) bool {
			return s.End.After(after)
		})
		if got.Count != n || got.Total != n || got.P95Ms != p95 {
			t.Errorf("after bad input count %d total %d p95 %v, want %d, %d, %v",
				got.Count, got.Total, got.P95Ms, n, n, p95)
		}
	})

	t.Run("resource readings", func(t *testing.T) {
		now := time.Now()
		for pid, cpu := range map[int32]float64{101: 10, 102: 20} {
			ev := &events.Resource{Host: "h1", Service: "agent", PID: pid, Time: now,
				CPUPercent: cpu, RSSBytes: 1 << 20, HostCPUPercent: 55, HostMemUsedPerc: 60}
			if err := conn.Publish(ctx, events.ResourceSubject("h1", "agent"), ev, ""); err != nil {
				t.Fatalf("publish resource: %v", err)
			}
		}
		got := w.waitSnapshot(t, "agent", resourceOp, func(s events.Snapshot) bool {
			return s.Count == 2
		})
		want := &events.ResourceFigures{CPUPercent: 30, RSSBytes: 2 << 20,
			HostCPUPercent: 55, HostMemUsedPerc: 60, Processes: 2}
		if diff := cmp.Diff(want, got.Resource); diff != "" {
			t.Errorf("agent resource figures (-want +got):\n%s", diff)
		}
		host := w.waitSnapshot(t, hostsService, resourceOp, func(s events.Snapshot) bool {
			return s.Count == 2
		})
		if host.Resource == nil || host.Resource.Processes != 2 {
			t.Errorf("host resource figures = %+v, want 2 processes", host.Resource)
		}
	})

	t.Run("snapshots filter", func(t *testing.T) {
		names := func(filter string) []string {
			var out []string
			for _, s := range svc.Snapshots(filter) {
				out = append(out, s.Service+"."+s.Op)
			}
			return out
		}
		if diff := cmp.Diff([]string{"agent.http", "agent.resource"}, names("agent")); diff != "" {
			t.Errorf("Snapshots(agent) (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"agent.http"}, names("agent.h")); diff != "" {
			t.Errorf("Snapshots(agent.h) (-want +got):\n%s", diff)
		}
		all := names("")
		for _, want := range []string{"aggregator.flush", "host.resource", "shell.cmd"} {
			if !slices.Contains(all, want) {
				t.Errorf("Snapshots(\"\") = %v, missing %s", all, want)
			}
		}
		if !slices.IsSorted(all) {
			t.Errorf("Snapshots(\"\") = %v, want sorted", all)
		}
	})
}

func TestAggregatorKVStore(t *testing.T) {
	ctx := context.Background()
	conn := testenv.Conn(t, testenv.NATS(t))
	store, err := cache.NewKV(ctx, conn.JS, "")
	if err != nil {
		t.Fatalf("kv store: %v", err)
	}
	w := watch(t, conn)
	start(t, conn, store)

	for i := range 10 {
		ev := &events.Timing{Service: "batcher", Op: "flush", Status: events.TimingOK,
			Duration: time.Duration(i+1) * time.Millisecond, Time: time.Now()}
		if err := conn.Publish(ctx, events.TimingSubject("batcher", "flush"), ev, ""); err != nil {
			t.Fatalf("publish timing: %v", err)
		}
	}
	got := w.waitSnapshot(t, "batcher", "flush", func(s events.Snapshot) bool {
		return s.Count == 10
	})
	if got.P90Ms != 9 || got.MeanMs != 5.5 {
		t.Errorf("p90 %v mean %v, want 9 and 5.5", got.P90Ms, got.MeanMs)
	}

	checkStored(t, w, func(key string) []byte {
		b, ok, err := store.Get(ctx, key)
		if err != nil || !ok {
			return nil
		}
		return b
	}, "batcher", "flush")
}
