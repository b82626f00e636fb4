package aggregator

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// fastConfig keeps integration tests quick: 250 ms buckets, final windows
// of 1 s, flushes every 100 ms.
func fastConfig(durable string) Config {
	return Config{
		Durable:            durable,
		Resolution:         250 * time.Millisecond,
		Windows:            []time.Duration{time.Second, 3 * time.Second},
		AllowedLateness:    500 * time.Millisecond,
		MaxFuture:          time.Second,
		PublishInterval:    100 * time.Millisecond,
		CheckpointInterval: 200 * time.Millisecond,
		StoreTimeout:       time.Second,
	}
}

// start runs a service until the test ends and checks that Run returns nil
// soon after its context is cancelled.
func start(t *testing.T, conn *bus.Conn, store cache.Store, cfg Config) *Service {
	t.Helper()
	svc, err := New(conn, store, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	testenv.Run(t, svc, 10*time.Second)
	return svc
}

// watcher records the snapshots published on NATS.
type watcher struct {
	mu     sync.Mutex
	sent   map[string]bool // raw bytes of every partial
	last   map[string]events.Snapshot
	finals map[string]int // times each group@end was published final
}

func watch(t *testing.T, conn *bus.Conn) *watcher {
	t.Helper()
	w := &watcher{sent: map[string]bool{}, last: map[string]events.Snapshot{},
		finals: map[string]int{}}
	sub, err := conn.NC.Subscribe(events.SnapshotAll, func(m *nats.Msg) {
		var snap events.Snapshot
		if err := events.Unmarshal(m.Data, &snap); err != nil {
			t.Errorf("snapshot on %s: %v", m.Subject, err)
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if snap.Partial {
			w.sent[string(m.Data)] = true
			w.last[snap.Service+"."+snap.Op] = snap
			return
		}
		w.finals[finalKey(snap)]++
	})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

func finalKey(s events.Snapshot) string {
	return fmt.Sprintf("%s.%s@%s", s.Service, s.Op, s.End.Format("15:04:05.000"))
}

// waitPartial waits for a partial snapshot of group that satisfies cond.
func (w *watcher) waitPartial(t *testing.T, group string,
	cond func(events.Snapshot) bool) events.Snapshot {
	t.Helper()
	var got events.Snapshot
	testenv.WaitFor(t, 15*time.Second, "snapshot of "+group, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		s, ok := w.last[group]
		got = s
		return ok && cond(s)
	})
	return got
}

func (w *watcher) published(raw []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent[string(raw)]
}

// checkStored waits until the stored snapshot of group is bytes that were
// published.
func checkStored(t *testing.T, w *watcher, get func(key string) []byte, service, op string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "stored snapshot also seen on nats", func() bool {
		stored := get(cache.SnapshotKey(service, op))
		return stored != nil && w.published(stored)
	})
}

// durations returns n lognormal durations and the nearest-rank q-quantile
// of them in ms.
func durations(n int, q float64) ([]time.Duration, float64) {
	ds := make([]time.Duration, n)
	ms := make([]float64, n)
	for i, v := range lognormal(3, n) {
		ds[i] = time.Duration(v * float64(time.Millisecond))
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
	svc := start(t, conn, store, fastConfig(""))

	// 2,000 timings of agent.http through the batched recorder.
	const n = 2000
	ds, wantP95 := durations(n, 0.95)
	rec, err := timing.New(conn.JS, "agent", timing.Options{})
	if err != nil {
		t.Fatalf("recorder: %v", err)
	}
	for _, d := range ds {
		rec.Record("http", events.TimingOK, d)
	}
	if err := rec.Flush(ctx); err != nil {
		t.Fatalf("flush recorder: %v", err)
	}
	got := w.waitPartial(t, "agent.http", func(s events.Snapshot) bool { return s.Count == n })
	if !within(*got.P95Ms, wantP95, 0.01) {
		t.Errorf("p95 = %v ms, want %v within 1%%", *got.P95Ms, wantP95)
	}

	t.Run("stored equals published", func(t *testing.T) {
		checkStored(t, w, func(key string) []byte {
			b, _ := rdb.Get(ctx, key).Bytes()
			return b
		}, "agent", "http")
		if ttl := rdb.TTL(ctx, cache.SnapshotKey("agent", "http")).Val(); ttl <= 0 {
			t.Errorf("ttl = %s, want positive", ttl)
		}
	})

	t.Run("json timing", func(t *testing.T) {
		body := fmt.Sprintf(`{"service":"shell","op":"cmd","duration":5000000,"time":%q}`,
			time.Now().Format(time.RFC3339Nano))
		if err := conn.NC.Publish(events.TimingSubject("shell", "cmd"), []byte(body)); err != nil {
			t.Fatalf("publish json: %v", err)
		}
		got := w.waitPartial(t, "shell.cmd", func(s events.Snapshot) bool { return s.Count == 1 })
		if *got.P50Ms != 5 || *got.MaxMs != 5 {
			t.Errorf("json timing p50 %v max %v, want 5 ms", *got.P50Ms, *got.MaxMs)
		}
	})

	t.Run("bad input rejected", func(t *testing.T) {
		checkRejected(t, conn, svc, w)
	})

	t.Run("resource readings", func(t *testing.T) {
		checkResources(t, conn, w)
	})

	t.Run("snapshots filter", func(t *testing.T) {
		names := func(filter string) []string {
			var out []string
			for _, s := range svc.Snapshots(filter) {
				out = append(out, s.Service+"."+s.Op)
			}
			return out
		}
		if diff := gocmp.Diff([]string{"agent.batch", "agent.http", "agent.resource"},
			names("agent")); diff != "" {
			t.Errorf("Snapshots(agent) (-want +got):\n%s", diff)
		}
		if diff := gocmp.Diff([]string{"agent.http"}, names("agent.h")); diff != "" {
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

// checkRejected sends a negative duration, garbage and a batch with a
// corrupt delta: three rejections, two of them counted on agent.http.
func checkRejected(t *testing.T, conn *bus.Conn, svc *Service, w *watcher) {
	ctx := context.Background()
	before := svc.Stats().Rejected
	bad := &events.Timing{Service: "agent", Op: "http", Duration: -time.Second, Time: time.Now()}
	if err := conn.Publish(ctx, events.TimingSubject("agent", "http"), bad, ""); err != nil {
		t.Fatalf("publish negative: %v", err)
	}
	if err := conn.NC.Publish(events.TimingSubject("agent", "http"), []byte{0xc1}); err != nil {
		t.Fatalf("publish garbage: %v", err)
	}
	good := summaryBytes(t, 1, 2, 3)
	batch := &events.TimingBatch{Service: "agent", Instance: "t", Seq: 1, Start: time.Now(),
		End: time.Now(), Deltas: []events.TimingDelta{
			{Op: "http", Summary: []byte("corrupt")},
			{Op: "batch", Status: events.TimingOK, Summary: good},
		}}
	if err := conn.Publish(ctx, events.BatchTimingSubject("agent"), batch, ""); err != nil {
		t.Fatalf("publish batch: %v", err)
	}

	testenv.WaitFor(t, 10*time.Second, "three rejections", func() bool {
		return svc.Stats().Rejected == before+3
	})
	got := w.waitPartial(t, "agent.http", func(s events.Snapshot) bool { return s.Rejected == 2 })
	if got.Count != 2000 || got.Total != 2000 {
		t.Errorf("after bad input count %d total %d, want 2000 and 2000", got.Count, got.Total)
	}
	ok := w.waitPartial(t, "agent.batch", func(s events.Snapshot) bool { return s.Count == 3 })
	if *ok.P50Ms != 2 {
		t.Errorf("good delta p50 = %v, want 2", *ok.P50Ms)
	}
}

func summaryBytes(t *testing.T, values ...float64) []byte {
	t.Helper()
	var s quantile.Summary
	for _, v := range values {
		_ = s.Add(v)
	}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkResources(t *testing.T, conn *bus.Conn, w *watcher) {
	now := time.Now()
	for pid, cpu := range map[int32]float64{101: 10, 102: 20} {
		ev := &events.Resource{Host: "h1", Service: "agent", PID: pid, Time: now,
			CPUPercent: cpu, RSSBytes: 1 << 20, HostCPUPercent: 55, HostMemUsedPerc: 60}
		err := conn.Publish(context.Background(), events.ResourceSubject("h1", "agent"), ev, "")
		if err != nil {
			t.Fatalf("publish resource: %v", err)
		}
	}
	got := w.waitPartial(t, "agent.resource", func(s events.Snapshot) bool { return s.Count == 2 })
	want := &events.ResourceFigures{CPUPercent: 30, RSSBytes: 2 << 20,
		HostCPUPercent: 55, HostMemUsedPerc: 60, Processes: 2}
	if diff := gocmp.Diff(want, got.Resource); diff != "" {
		t.Errorf("agent resource figures (-want +got):\n%s", diff)
	}
	if got.P50Ms != nil {
		t.Errorf("resource group p50 = %v, want none", *got.P50Ms)
	}
}

func TestAggregatorKVStore(t *testing.T) {
	ctx := context.Background()
	conn := testenv.Conn(t, testenv.NATS(t))
	store, err := cache.NewKV(ctx, conn.JS, "")
	if err != nil {
		t.Fatalf("kv store: %v", err)
	}
	w := watch(t, conn)
	start(t, conn, store, fastConfig(""))

	for i := range 10 {
		ev := &events.Timing{Service: "batcher", Op: "flush", Status: events.TimingOK,
			Duration: time.Duration(i+1) * time.Millisecond, Time: time.Now()}
		if err := conn.Publish(ctx, events.TimingSubject("batcher", "flush"), ev, ""); err != nil {
			t.Fatalf("publish timing: %v", err)
		}
	}
	got := w.waitPartial(t, "batcher.flush", func(s events.Snapshot) bool { return s.Count == 10 })
	if *got.P90Ms != 9 || *got.MeanMs != 5.5 {
		t.Errorf("p90 %v mean %v, want 9 and 5.5", *got.P90Ms, *got.MeanMs)
	}
	checkStored(t, w, func(key string) []byte {
		b, ok, err := store.Get(ctx, key)
		if err != nil || !ok {
			return nil
		}
		return b
	}, "batcher", "flush")
}

// publisher sends timings of service "shop" on three ops, with statuses
// and durations that vary with the index.
type publisher struct {
	t    *testing.T
	conn *bus.Conn
	ops  int
	sent int
	last time.Time
}

func (p *publisher) send(n int) {
	p.t.Helper()
	for range n {
		i := p.sent
		status := events.TimingOK
		if i%7 == 0 {
			status = events.TimingError
		}
		op := fmt.Sprintf("op%d", i%p.ops)
		p.last = time.Now()
		ev := &events.Timing{Service: "shop", Op: op, Status: status,
			Duration: time.Duration(i%97+1) * time.Millisecond, Time: p.last}
		if err := p.conn.Publish(context.Background(), events.TimingSubject("shop", op), ev,
			""); err != nil {
			p.t.Fatalf("publish: %v", err)
		}
		p.sent++
	}
}

// sendFor sends n timings every 50 ms for d.
func (p *publisher) sendFor(d time.Duration, n int) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		p.send(n)
	}
}

// lastEnd is the end of the final window of the last timing sent.
func (p *publisher) lastEnd() time.Time {
	return p.last.Truncate(time.Second).Add(time.Second)
}

// storedFinals reads the final snapshots of the shop service that the
// consumer named prefix published into the snapshots stream, by group and
// window end, up to until; a window stored twice fails the test.
func storedFinals(t *testing.T, conn *bus.Conn, prefix string,
	until time.Time) map[string]events.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := conn.JS.Stream(ctx, events.StreamSnapshots)
	if err != nil {
		t.Fatalf("snapshots stream: %v", err)
	}
	out := map[string]events.Snapshot{}
	state := stream.CachedInfo().State
	for seq := state.FirstSeq; state.Msgs > 0 && seq <= state.LastSeq; seq++ {
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get final %d: %v", seq, err)
		}
		if !strings.HasPrefix(msg.Header.Get(jetstream.MsgIDHeader), prefix+`:"shop".`) {
			continue
		}
		var snap events.Snapshot
		if err := events.Unmarshal(msg.Data, &snap); err != nil {
			t.Fatalf("final %d: %v", seq, err)
		}
		if snap.End.After(until) {
			continue
		}
		k := finalKey(snap)
		if _, dup := out[k]; dup {
			t.Errorf("final %s of %s stored twice", k, prefix)
		}
		out[k] = snap
	}
	return out
}

// waitFinals waits until the consumers named by each set of prefixes have
// stored, between them, the finals of every op up to the window ending at
// end, and returns each set's finals.
func waitFinals(t *testing.T, conn *bus.Conn, end time.Time, ops int,
	sets ...[]string) []map[string]events.Snapshot {
	t.Helper()
	out := make([]map[string]events.Snapshot, len(sets))
	complete := func(m map[string]events.Snapshot) bool {
		for i := range ops {
			k := finalKey(events.Snapshot{Service: "shop", Op: fmt.Sprintf("op%d", i),
				Figures: events.Figures{End: end}})
			if _, ok := m[k]; !ok {
				return false
			}
		}
		return true
	}
	testenv.WaitFor(t, 20*time.Second, "finals up to "+end.Format("15:04:05"), func() bool {
		for i, set := range sets {
			out[i] = map[string]events.Snapshot{}
			for _, p := range set {
				for k, f := range storedFinals(t, conn, p, end) {
					if _, dup := out[i][k]; dup {
						t.Errorf("final %s published by two of %v", k, set)
					}
					out[i][k] = f
				}
			}
		}
		return !slices.ContainsFunc(out, func(m map[string]events.Snapshot) bool {
			return !complete(m)
		})
	})
	return out
}

// figuresOf keeps what a final must reproduce: its window's figures and
// the longer views. Totals count up to the moment of publication.
func figuresOf(m map[string]events.Snapshot) map[string][]events.Figures {
	out := map[string][]events.Figures{}
	for k, s := range m {
		out[k] = append([]events.Figures{s.Figures}, s.Rollups...)
	}
	return out
}

func TestFinalsOnce(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	w := watch(t, conn)
	svc := start(t, testenv.Conn(t, url), nil, fastConfig("once"))

	p := &publisher{t: t, conn: conn, ops: 1}
	p.send(20)
	first := p.lastEnd()
	end := first.Add(2 * time.Second)
	finals := waitFinals(t, conn, end, 1, []string{"once"})[0]

	for e := first; !e.After(end); e = e.Add(time.Second) {
		k := finalKey(events.Snapshot{Service: "shop", Op: "op0",
			Figures: events.Figures{End: e}})
		f, ok := finals[k]
		switch {
		case !ok:
			t.Errorf("no final %s", k)
		case f.Partial || f.Window.Std() != time.Second:
			t.Errorf("final %s: partial %v window %s, want false and 1s", k, f.Partial, f.Window)
		case e.Equal(first) && (f.Count != 20 || f.P50Ms == nil):
			t.Errorf("final %s: count %d p50 %v, want 20 with quantiles", k, f.Count, f.P50Ms)
		case !e.Equal(first) && (f.Count != 0 || latency(f.Figures) != nil):
			t.Errorf("final %s: count %d latency %v, want 0 and none", k, f.Count,
				latency(f.Figures))
		case !e.Equal(first) && (len(f.Rollups) != 1 || f.Rollups[0].Count != 20):
			t.Errorf("final %s: rollups %+v, want the 3 s view counting 20", k, f.Rollups)
		}
	}

	// Each final went out once on NATS too, not only once into the stream.
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, n := range w.finals {
		if n != 1 {
			t.Errorf("final %s published %d times", k, n)
		}
	}
	if st := svc.Stats(); st.Finals < 3 || st.PublishFailed != 0 {
		t.Errorf("stats finals %d publish failed %d, want at least 3 and 0",
			st.Finals, st.PublishFailed)
	}
}

// TestRestart kills an aggregator between checkpoints, restarts it and
// checks that its finals equal those of an instance that ran throughout.
func TestRestart(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	cfg := fastConfig("agg")
	cfg.CheckpointInterval = 1200 * time.Millisecond
	refCfg := cfg
	refCfg.Durable = "ref"
	start(t, testenv.Conn(t, url), nil, refCfg)

	// The first run, on its own connection so that it can be cut.
	connA := testenv.Conn(t, url)
	a, err := New(connA, nil, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	p := &publisher{t: t, conn: conn, ops: 3}
	p.sendFor(1500*time.Millisecond, 10)
	// Right after a checkpoint, so that the next one comes after the kill.
	testenv.WaitFor(t, 10*time.Second, "a checkpoint", func() bool {
		return a.Stats().CheckpointSeq > 0
	})
	seq := a.Stats().CheckpointSeq
	testenv.WaitFor(t, 10*time.Second, "the next checkpoint", func() bool {
		return a.Stats().CheckpointSeq > seq
	})
	p.send(100)
	sent := int64(p.sent)
	testenv.WaitFor(t, 10*time.Second, "the first run to apply every timing", func() bool {
		return a.Stats().Applied >= sent
	})

	// kill -9: the connection goes, no last flush or checkpoint.
	connA.NC.Close()
	cancel()
	<-done
	st := a.Stats()
	t.Logf("killed after applying %d timings up to stream seq %d, checkpoint at %d",
		st.Applied, a.appliedSeq.Load(), st.CheckpointSeq)
	if a.appliedSeq.Load() <= st.CheckpointSeq {
		t.Errorf("the checkpoint holds every event applied, want some to replay")
	}

	p.sendFor(1500*time.Millisecond, 10)
	b := start(t, testenv.Conn(t, url), nil, cfg)
	finals := waitFinals(t, conn, p.lastEnd(), 3, []string{"agg"}, []string{"ref"})

	got, want := figuresOf(finals[0]), figuresOf(finals[1])
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("finals after a restart (-uninterrupted +restarted):\n%s", diff)
	}
	if len(want) < 9 {
		t.Errorf("%d finals compared, want at least 9 (3 ops over 3 windows)", len(want))
	}
	t.Logf("restarted: %d finals equal; second run skipped %d, applied %d",
		len(want), b.Stats().Skipped, b.Stats().Applied)
}

// TestPartitions checks that two partitions together publish the finals
// one instance computes from the same events.
func TestPartitions(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	one := start(t, testenv.Conn(t, url), nil, fastConfig("one"))
	var parts []*Service
	for i := range 2 {
		cfg := fastConfig("part")
		cfg.Partitions, cfg.Partition = 2, i
		parts = append(parts, start(t, testenv.Conn(t, url), nil, cfg))
	}

	p := &publisher{t: t, conn: conn, ops: 12}
	p.sendFor(1200*time.Millisecond, 12)
	finals := waitFinals(t, conn, p.lastEnd(), 12,
		[]string{"one"}, []string{"part-p0of2", "part-p1of2"})
	if diff := gocmp.Diff(figuresOf(finals[0]), figuresOf(finals[1])); diff != "" {
		t.Errorf("partitions' finals (-one instance +union of two):\n%s", diff)
	}
	for i, s := range parts {
		if st := s.Stats(); st.Applied == 0 || st.Foreign == 0 {
			t.Errorf("partition %d applied %d, left %d to the other: want both > 0",
				i, st.Applied, st.Foreign)
		}
	}
	if st := one.Stats(); st.Foreign != 0 {
		t.Errorf("single instance left %d samples to others, want 0", st.Foreign)
	}
}

func within(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Abs(want)+1e-12
}
