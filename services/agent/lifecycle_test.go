package agent_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
)

// tracker wraps a handler and keeps, by request ID, when each run started
// and how many runs succeeded, and how many runs are going on now.
type tracker struct {
	h       agent.Handler
	running atomic.Int64

	mu     sync.Mutex
	starts map[string][]time.Time
	oks    map[string]int
}

func newTracker(h agent.Handler) *tracker {
	return &tracker{h: h, starts: map[string][]time.Time{}, oks: map[string]int{}}
}

func (tr *tracker) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	tr.mu.Lock()
	tr.starts[req.ID] = append(tr.starts[req.ID], time.Now())
	tr.mu.Unlock()
	tr.running.Add(1)
	defer tr.running.Add(-1)

	out, err := tr.h.Handle(ctx, req)
	if err == nil {
		tr.mu.Lock()
		tr.oks[req.ID]++
		tr.mu.Unlock()
	}
	return out, err
}

// runs returns how many times the handler started for id, and how many of
// those runs succeeded.
func (tr *tracker) runs(id string) (started, ok int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.starts[id]), tr.oks[id]
}

// startedAt returns the start of every run of id.
func (tr *tracker) startedAt(id string) []time.Time {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]time.Time(nil), tr.starts[id]...)
}

// total returns how many runs started, over every ID.
func (tr *tracker) total() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, s := range tr.starts {
		n += len(s)
	}
	return n
}

// sleepTracker returns a registry whose sleep kind is the built-in one,
// wrapped in a tracker.
func sleepTracker(t *testing.T) (*agent.Registry, *tracker) {
	t.Helper()
	tr := newTracker(agent.SleepHandler)
	reg := agent.NewRegistry()
	if err := reg.Register("sleep", tr, agent.Options{}); err != nil {
		t.Fatal(err)
	}
	return reg, tr
}

// runFunc adapts a function to testenv.Runner.
type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

// killable is an agent running on a connection of its own.
type killable struct {
	conn   *bus.Conn
	stop   func() error
	killed atomic.Bool
}

// startKillable runs an agent with its own connection to url.
func startKillable(t *testing.T, url string, reg *agent.Registry, cfg agent.Config) *killable {
	t.Helper()
	k := &killable{conn: testenv.Conn(t, url)}
	svc, err := agent.New(k.conn, nil, reg, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	k.stop = testenv.Run(t, runFunc(func(ctx context.Context) error {
		err := svc.Run(ctx)
		if k.killed.Load() {
			return nil // whatever Run returns after a kill is accepted
		}
		return err
	}), waitTime)
	return k
}

// kill stops the agent as a crash would: its connection closes at once,
// without draining, so it can neither ack nor report progress, and its
// context ends.
func (k *killable) kill(t *testing.T) {
	t.Helper()
	k.killed.Store(true)
	k.conn.NC.Close()
	if err := k.stop(); err != nil {
		t.Fatal(err)
	}
}

// storedResults is how many results the results stream holds: the
// de-duplicated truth, read at once rather than through a consumer.
func storedResults(t *testing.T, conn *bus.Conn) uint64 {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatalf("stream %s: %v", events.StreamResults, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", events.StreamResults, err)
	}
	return info.State.Msgs
}

// sleepItems returns n sleep items of ms milliseconds named prefix-1...
func sleepItems(prefix string, n int, ms int) ([]events.WorkRequest, []string) {
	items := make([]events.WorkRequest, n)
	ids := make([]string, n)
	for i := range items {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i+1)
		items[i] = item(ids[i], fmt.Sprintf(`{"ms": %d}`, ms))
	}
	return items, ids
}

// checkOneOK checks that each id has one result, ok and from agent.
func checkOneOK(t *testing.T, conn *bus.Conn, got map[string]events.Result, agentName string,
	ids []string) {
	t.Helper()
	for _, id := range ids {
		r := got[id]
		if r.Status != events.StatusOK || r.Agent != agentName {
			t.Errorf("%s: status %s, agent %q, error %q; want ok from %s", id, r.Status,
				r.Agent, r.Error, agentName)
		}
	}
	if n := storedResults(t, conn); n != uint64(len(ids)) {
		t.Errorf("results stream holds %d results, want %d, one per item", n, len(ids))
	}
}

// lifecycleConfig is an agent's configuration in these tests: ten
// workers, and a short poll so that stops are quick.
func lifecycleConfig(name string) agent.Config {
	return agent.Config{Name: name, Workers: 10, PollWait: time.Second,
		Admission: agent.AdmissionConfig{Disabled: true}}
}

// stopWithinDrain stops a and checks that Run returned within the drain
// timeout plus a margin for a loaded machine.
func stopWithinDrain(t *testing.T, a *killable, drain time.Duration) {
	t.Helper()
	start := time.Now()
	if err := a.stop(); err != nil {
		t.Fatalf("Run() error = %v", err)
	}
	took := time.Since(start)
	t.Logf("Run returned %s after cancel", took.Round(time.Millisecond))
	if limit := drain + 2*time.Second; took > limit {
		t.Errorf("Run returned %s after cancel, want within %s (drain timeout + 2 s)",
			took, limit)
	}
}

// TestAgentCloseFinishesInFlightItems closes an agent running ten 2 s
// items: Run waits for them, each publishes one result, none runs twice.
func TestAgentCloseFinishesInFlightItems(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	reg, tr := sleepTracker(t)
	cfg := lifecycleConfig("agent-1")
	cfg.DrainTimeout = 5 * time.Second
	a := startKillable(t, url, reg, cfg)

	items, ids := sleepItems("close", 10, 2000)
	publishBatch(t, client, "sleep", items...)
	testenv.WaitFor(t, waitTime, "ten items running", func() bool {
		return tr.running.Load() == 10
	})

	stopWithinDrain(t, a, cfg.DrainTimeout)

	checkOneOK(t, client, waitResults(t, res, ids...), "agent-1", ids)
	for _, id := range ids {
		if started, ok := tr.runs(id); started != 1 || ok != 1 {
			t.Errorf("%s: handler started %d times, succeeded %d; want 1, 1", id, started, ok)
		}
	}
	info := consumerInfo(t, client)
	if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Errorf("consumer: pending %d, ack pending %d, redelivered %d; want the batch "+
			"acked once", info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
}

// TestAgentCloseStartsNoNewItems closes an agent whose two workers run
// the first two items of a batch of six: those finish within the drain
// timeout, the four waiting for a worker never start there and are handed
// back at once, and a second agent runs them.
func TestAgentCloseStartsNoNewItems(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	batches := collect[events.Batch](t, client, events.StreamBatches)
	reg1, tr1 := sleepTracker(t)
	cfg := lifecycleConfig("agent-1")
	cfg.Workers = 2
	cfg.DrainTimeout = 10 * time.Second
	a := startKillable(t, url, reg1, cfg)

	items, ids := sleepItems("held", 6, 1000)
	publishBatch(t, client, "sleep", items...)
	testenv.WaitFor(t, waitTime, "two items running", func() bool {
		return tr1.running.Load() == 2
	})
	stopWithinDrain(t, a, cfg.DrainTimeout)

	reg2, tr2 := sleepTracker(t)
	startKillable(t, url, reg2, lifecycleConfig("agent-2"))
	got := waitResults(t, res, ids...)
	checkRanOnce(t, got, "agent-1", tr1, ids[:2])
	checkRanOnce(t, got, "agent-2", tr2, ids[2:])
	if n := tr1.total(); n != 2 {
		t.Errorf("first agent started %d items, want 2: none after its stop", n)
	}
	checkRemainder(t, batches, ids[2:])
	checkDeliveries(t, client, 2, "the batch and its remainder, once each")
}

// TestAgentCloseAfterDrainTimeoutHandsBackUnfinished closes an agent in
// the middle of a batch whose short items are done, four long ones run
// past the drain timeout and two more wait for a worker: the batch is
// acked, the six long items are handed back in a remainder batch, and a
// second agent runs each of them once. No item runs twice.
func TestAgentCloseAfterDrainTimeoutHandsBackUnfinished(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	batches := collect[events.Batch](t, client, events.StreamBatches)
	reg1, tr1 := sleepTracker(t)
	cfg := lifecycleConfig("agent-1")
	cfg.Workers = 4
	cfg.DrainTimeout = 500 * time.Millisecond
	a := startKillable(t, url, reg1, cfg)

	short, shortIDs := sleepItems("short", 4, 50)
	long, longIDs := sleepItems("long", 6, 3000)
	publishBatch(t, client, "sleep", append(short, long...)...)
	testenv.WaitFor(t, waitTime, "short items done, four long ones running", func() bool {
		return len(results(t, res)) == len(shortIDs) && tr1.running.Load() == 4
	})
	stopWithinDrain(t, a, cfg.DrainTimeout)

	reg2, tr2 := sleepTracker(t)
	startKillable(t, url, reg2, lifecycleConfig("agent-2"))
	got := waitResults(t, res, append(shortIDs, longIDs...)...)
	checkRanOnce(t, got, "agent-1", tr1, shortIDs)
	checkRanOnce(t, got, "agent-2", tr2, longIDs)
	for _, id := range shortIDs {
		if n, _ := tr2.runs(id); n != 0 {
			t.Errorf("%s: second agent started it %d times, want 0", id, n)
		}
	}
	if n := storedResults(t, client); n != 10 {
		t.Errorf("results stream holds %d results, want 10, one per item", n)
	}
	stopped := 0
	for _, id := range longIDs {
		started, ok := tr1.runs(id)
		stopped += started
		if ok != 0 {
			t.Errorf("%s: first agent finished it %d times, want 0", id, ok)
		}
	}
	if stopped != 4 {
		t.Errorf("first agent started %d long items, want 4 (2 waited for a worker)",
			stopped)
	}

	checkRemainder(t, batches, longIDs)
	checkDeliveries(t, client, 2, "the batch and its remainder, once each")
}

// TestAgentCloseNaksBatchWhenRemainderRefused closes an agent past its
// drain timeout while the batches stream refuses new batches: the
// remainder is not published, so the whole batch is nak'ed and a second
// agent runs every item of it; none is lost.
func TestAgentCloseNaksBatchWhenRemainderRefused(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	reg1, tr1 := sleepTracker(t)
	cfg := lifecycleConfig("agent-1")
	cfg.DrainTimeout = 300 * time.Millisecond
	a := startKillable(t, url, reg1, cfg)

	short, shortIDs := sleepItems("short", 2, 50)
	long, longIDs := sleepItems("long", 2, 3000)
	publishBatch(t, client, "sleep", append(short, long...)...)
	testenv.WaitFor(t, waitTime, "short items done, long ones running", func() bool {
		return len(results(t, res)) == len(shortIDs) && tr1.running.Load() == 2
	})
	refuseBatches(t, client)
	stopWithinDrain(t, a, cfg.DrainTimeout)
	if n := batchCount(t, client); n != 1 {
		t.Fatalf("batches stream holds %d batches, want only the original", n)
	}

	// The second agent's connection puts the stream's limits back.
	reg2, tr2 := sleepTracker(t)
	startKillable(t, url, reg2, lifecycleConfig("agent-2"))
	got := waitResults(t, res, append(shortIDs, longIDs...)...)
	checkRanOnce(t, got, "agent-2", tr2, longIDs)
	for _, id := range shortIDs {
		if s1, _ := tr1.runs(id); s1 != 1 {
			t.Errorf("%s: first agent started it %d times, want 1", id, s1)
		}
		if s2, ok2 := tr2.runs(id); s2 != 1 || ok2 != 1 {
			t.Errorf("%s: second agent started %d, ok %d; want 1, 1: the whole batch "+
				"runs again", id, s2, ok2)
		}
	}
	if n := storedResults(t, client); n != 4 {
		t.Errorf("results stream holds %d results, want 4, one per item", n)
	}
	checkDeliveries(t, client, 2, "the batch twice, nak'ed once")
}

// TestAgentHandsBackItemWhoseResultIsRefused runs a batch one of whose
// items first returns an output too large to publish: the agent hands
// back that item alone, runs it again, and acks the batch; the others
// run once.
func TestAgentHandsBackItemWhoseResultIsRefused(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	batches := collect[events.Batch](t, client, events.StreamBatches)
	tr := newTracker(&oversizedOnce{size: int(client.NC.MaxPayload()) + 1})
	reg := agent.NewRegistry()
	if err := reg.Register("big", tr, agent.Options{}); err != nil {
		t.Fatal(err)
	}
	startKillable(t, url, reg, lifecycleConfig("agent-1"))

	publishBatch(t, client, "big", item("small-1", `{}`), item("huge", `{}`),
		item("small-2", `{}`))
	got := waitResults(t, res, "small-1", "huge", "small-2")
	for id, want := range map[string]int{"small-1": 1, "huge": 2, "small-2": 1} {
		if started, ok := tr.runs(id); started != want || ok != want {
			t.Errorf("%s: started %d, ok %d; want %d, %d", id, started, ok, want, want)
		}
		if r := got[id]; r.Status != events.StatusOK {
			t.Errorf("%s: status %s, error %q; want ok", id, r.Status, r.Error)
		}
	}
	checkRemainder(t, batches, []string{"huge"})
	checkDeliveries(t, client, 2, "the batch and its remainder, once each")
}

// oversizedOnce is a test kind whose item "huge" returns, on its first
// run, an output of size bytes, too large to publish; every other run
// returns {}.
type oversizedOnce struct {
	size int
	done atomic.Bool
}

func (o *oversizedOnce) Handle(_ context.Context, req *events.WorkRequest) (events.Payload,
	error) {
	if req.ID == "huge" && !o.done.Swap(true) {
		return events.Payload(`"` + strings.Repeat("x", o.size) + `"`), nil
	}
	return events.Payload(`{}`), nil
}

// checkRanOnce checks that each of ids has its result from agentName,
// whose tracker is tr, and ran there once.
func checkRanOnce(t *testing.T, got map[string]events.Result, agentName string,
	tr *tracker, ids []string) {
	t.Helper()
	for _, id := range ids {
		if r := got[id]; r.Status != events.StatusOK || r.Agent != agentName {
			t.Errorf("%s: status %s, agent %q, error %q; want ok from %s", id, r.Status,
				r.Agent, r.Error, agentName)
		}
		if started, ok := tr.runs(id); started != 1 || ok != 1 {
			t.Errorf("%s: %s started it %d times, finished %d; want 1, 1", id, agentName,
				started, ok)
		}
	}
}

// checkRemainder checks that the batches stream holds two batches: the
// one published, then its remainder with the items ids, in order.
func checkRemainder(t *testing.T, c *collector[events.Batch], ids []string) {
	t.Helper()
	var all []events.Batch
	testenv.WaitFor(t, waitTime, "two batches read back", func() bool {
		all = c.all()
		return len(all) >= 2
	})
	if len(all) != 2 {
		t.Fatalf("batches stream holds %d batches, want 2", len(all))
	}
	orig, rest := all[0], all[1]
	if want := orig.ID + ".rest1-"; !strings.HasPrefix(rest.ID, want) {
		t.Errorf("remainder ID %q, want it to start with %q", rest.ID, want)
	}
	var got []string
	for _, it := range rest.Items {
		got = append(got, it.ID)
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) || rest.Kind != orig.Kind {
		t.Errorf("remainder: kind %q, items %v; want kind %q, items %v", rest.Kind, got,
			orig.Kind, ids)
	}
}

// checkDeliveries waits until every batch is acked, then checks that the
// durable delivered n batches in all, as what says.
func checkDeliveries(t *testing.T, conn *bus.Conn, n uint64, what string) {
	t.Helper()
	waitBatchesSettled(t, conn)
	if got := consumerInfo(t, conn).Delivered.Consumer; got != n {
		t.Errorf("durable delivered %d batches, want %d: %s", got, n, what)
	}
}

// refuseBatches has the batches stream refuse every new batch while it
// holds one; bus.Conn.EnsureStreams undoes it.
func refuseBatches(t *testing.T, conn *bus.Conn) {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamBatches)
	if err != nil {
		t.Fatalf("stream %s: %v", events.StreamBatches, err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := conn.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("update stream %s: %v", events.StreamBatches, err)
	}
}

// batchCount is how many batches the batches stream holds.
func batchCount(t *testing.T, conn *bus.Conn) uint64 {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamBatches)
	if err != nil {
		t.Fatalf("stream %s: %v", events.StreamBatches, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", events.StreamBatches, err)
	}
	return info.State.Msgs
}

// TestAgentCrashRedeliversWithinAckWait kills an agent in the middle of a
// 60 s item that has run longer than the ack wait: a second agent starts
// the item again about one ack wait after the kill, not after the item's
// time.
func TestAgentCrashRedeliversWithinAckWait(t *testing.T) {
	const ackWait = 3 * time.Second
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	cfg := lifecycleConfig("agent-1")
	cfg.AckWait = ackWait
	cfg.ItemTimeout = 2 * time.Minute
	// The killed agent cannot report anything; its Run need not wait.
	cfg.DrainTimeout = 100 * time.Millisecond
	reg1, tr1 := sleepTracker(t)
	a := startKillable(t, url, reg1, cfg)

	publishBatch(t, client, "sleep", item("long", `{"ms": 60000}`))
	testenv.WaitFor(t, waitTime, "the long item running", func() bool {
		return tr1.running.Load() == 1
	})
	// Past the ack wait, only progress reports keep the item with agent 1.
	first := tr1.startedAt("long")[0]
	testenv.WaitFor(t, 2*ackWait, "the long item running past the ack wait", func() bool {
		return time.Since(first) > ackWait+500*time.Millisecond
	})

	a.kill(t)
	killed := time.Now()
	reg2, tr2 := sleepTracker(t)
	cfg.Name = "agent-2"
	startKillable(t, url, reg2, cfg)
	testenv.WaitFor(t, 3*ackWait, "the long item started again", func() bool {
		return len(tr2.startedAt("long")) > 0
	})
	delay := tr2.startedAt("long")[0].Sub(killed)
	t.Logf("redelivered %s after the kill (ack wait %s)", delay.Round(time.Millisecond),
		ackWait)

	if started, _ := tr1.runs("long"); started != 1 {
		t.Errorf("first agent started the item %d times, want 1", started)
	}
	if n := storedResults(t, client); n != 0 {
		t.Errorf("results of a killed item: %d, want none", n)
	}
}

// TestAgentInProgressKeepsLongItem runs an item for longer than twice the
// ack wait: its progress reports keep it from a second agent on the same
// durable, and it gets one result.
func TestAgentInProgressKeepsLongItem(t *testing.T) {
	const ackWait = 2 * time.Second
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	cfg := lifecycleConfig("agent-1")
	cfg.AckWait = ackWait
	reg1, tr1 := sleepTracker(t)
	startKillable(t, url, reg1, cfg)

	publishBatch(t, client, "sleep", item("kept", `{"ms": 5000}`))
	testenv.WaitFor(t, waitTime, "the item running", func() bool {
		return tr1.running.Load() == 1
	})
	reg2, tr2 := sleepTracker(t)
	cfg.Name = "agent-2"
	startKillable(t, url, reg2, cfg)

	checkOneOK(t, client, waitResults(t, res, "kept"), "agent-1", []string{"kept"})
	if started, ok := tr1.runs("kept"); started != 1 || ok != 1 {
		t.Errorf("first agent: started %d, ok %d; want 1, 1", started, ok)
	}
	if n := tr2.total(); n != 0 {
		t.Errorf("second agent started %d runs, want none", n)
	}
	waitBatchesSettled(t, client)
	if info := consumerInfo(t, client); info.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d batches, want none", info.NumRedelivered)
	}
}

// TestAgentJoiningSetsAckWait starts a second agent with a shorter ack
// wait on the durable of one that is running an item: the durable takes
// the shorter ack wait, and the item, reported every progressMax by the
// first agent, is still not redelivered to the second.
func TestAgentJoiningSetsAckWait(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	res := collect[events.Result](t, client, events.StreamResults)
	cfg := lifecycleConfig("agent-1")
	cfg.AckWait = 30 * time.Second
	reg1, tr1 := sleepTracker(t)
	startKillable(t, url, reg1, cfg)

	publishBatch(t, client, "sleep", item("kept", `{"ms": 3000}`))
	testenv.WaitFor(t, waitTime, "the item running", func() bool {
		return tr1.running.Load() == 1
	})
	reg2, tr2 := sleepTracker(t)
	cfg.Name = "agent-2"
	cfg.AckWait = time.Second
	startKillable(t, url, reg2, cfg)

	checkOneOK(t, client, waitResults(t, res, "kept"), "agent-1", []string{"kept"})
	if n := tr2.total(); n != 0 {
		t.Errorf("second agent started %d runs, want none", n)
	}
	info := consumerInfo(t, client)
	if got, want := info.Config.AckWait, time.Second; got != want {
		t.Errorf("durable ack wait = %s, want %s, the last agent's", got, want)
	}
	if info.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d batches, want none", info.NumRedelivered)
	}
}
