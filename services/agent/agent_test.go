package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
	"github.com/perfpipe/perfpipe/services/agent"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTime = 15 * time.Second

// collector keeps every event of one type read from a stream.
type collector[T any] struct {
	mu   sync.Mutex
	list []T
}

// collect reads the events on subjects of stream from the start, until
// the test ends.
func collect[T any, P interface {
	*T
	events.Event
}](t *testing.T, conn *bus.Conn, stream string, subjects ...string) *collector[T] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := conn.JS.OrderedConsumer(ctx, stream,
		jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", stream, err)
	}
	c := &collector[T]{}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		var v T
		if err := events.Unmarshal(msg.Data(), P(&v)); err != nil {
			t.Errorf("%s: %v", msg.Subject(), err)
			return
		}
		c.mu.Lock()
		c.list = append(c.list, v)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("consume %s: %v", stream, err)
	}
	t.Cleanup(cc.Stop)
	return c
}

func (c *collector[T]) all() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]T(nil), c.list...)
}

// results returns the results by ID, failing on an ID seen twice.
func results(t *testing.T, c *collector[events.Result]) map[string]events.Result {
	t.Helper()
	byID := map[string]events.Result{}
	for _, r := range c.all() {
		if _, dup := byID[r.ID]; dup {
			t.Errorf("result %s published twice", r.ID)
		}
		byID[r.ID] = r
	}
	return byID
}

// waitResults waits until every id has a result and returns them all.
func waitResults(
	t *testing.T, c *collector[events.Result], ids ...string,
) map[string]events.Result {
	t.Helper()
	testenv.WaitFor(t, waitTime, fmt.Sprintf("results of %v", ids), func() bool {
		byID := results(t, c)
		for _, id := range ids {
			if _, ok := byID[id]; !ok {
				return false
			}
		}
		return true
	})
	return results(t, c)
}

// deadByID waits for a dead letter of each id and returns them by ID.
func deadByID(
	t *testing.T, c *collector[events.DeadLetter], ids ...string,
) map[string]events.DeadLetter {
	t.Helper()
	byID := map[string]events.DeadLetter{}
	testenv.WaitFor(t, waitTime, fmt.Sprintf("dead letters of %v", ids), func() bool {
		for _, dl := range c.all() {
			byID[dl.ID] = dl
		}
		for _, id := range ids {
			if _, ok := byID[id]; !ok {
				return false
			}
		}
		return true
	})
	return byID
}

// startAgent runs an agent until the returned stop is called or the test
// ends; stop returns Run's error, or an error when Run does not return in
// time, and the test's cleanup reports one.
func startAgent(t *testing.T, conn *bus.Conn, store cache.Store, reg *agent.Registry,
	cfg agent.Config) (stop func() error) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test-agent"
	}
	svc, err := agent.New(conn, store, reg, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	return testenv.Run(t, svc, waitTime)
}

var batchSeq atomic.Int64

// publishBatch publishes items as one batch of kind, as the batcher would.
func publishBatch(t *testing.T, conn *bus.Conn, kind string, items ...events.WorkRequest) {
	t.Helper()
	now := time.Now()
	for i := range items {
		items[i].Trace = events.Trace{Submitted: now.Add(-30 * time.Millisecond),
			Accepted: now.Add(-20 * time.Millisecond), Released: now.Add(-10 * time.Millisecond),
			Batched: now}
	}
	id := fmt.Sprintf("batch-%d", batchSeq.Add(1))
	b := &events.Batch{ID: id, Kind: kind, Created: now, Items: items}
	if err := conn.Publish(context.Background(), events.BatchSubject(kind), b, id); err != nil {
		t.Fatalf("publish batch: %v", err)
	}
}

func item(id, payload string) events.WorkRequest {
	return events.WorkRequest{ID: id, Payload: events.Payload(payload)}
}

func builtins(t *testing.T, cfg agent.Config) *agent.Registry {
	t.Helper()
	reg, err := agent.NewBuiltins(cfg)
	if err != nil {
		t.Fatalf("NewBuiltins() error = %v", err)
	}
	return reg
}

// fastRetries keeps failure tests short.
func fastRetries() agent.Config {
	return agent.Config{
		MaxAttempts:  3,
		RetryInitial: 5 * time.Millisecond,
		RetryMax:     20 * time.Millisecond,
		PollWait:     time.Second,
		CSV:          agent.CSVConfig{DataDir: priceDir},
	}
}

const aaplByYear = `{"file": "AAPL.csv", "group": "Date", "group_prefix": 4,
	"values": ["Close", "Volume"]}`

func TestAgentRunsBuiltinsWithRedisCache(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	redisURL := testenv.Redis(t)
	store, err := cache.NewRedis(context.Background(), redisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	res := collect[events.Result](t, conn, events.StreamResults)
	timings := collect[events.TimingBatch](t, conn, events.StreamTelemetry,
		events.BatchTimingSubject("agent"))

	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "pong")
	}))
	t.Cleanup(site.Close)
	replies, err := conn.NC.SubscribeSync("reply.h1")
	if err != nil {
		t.Fatal(err)
	}

	cfg := fastRetries()
	startAgent(t, conn, store, builtins(t, cfg), cfg)
	publishBatch(t, conn, "csv", item("csv1", aaplByYear),
		item("csv2", `{"file": "IBM.csv", "group": "Date", "values": ["Close"]}`))
	publishBatch(t, conn, "sleep", item("s1", `{"ms": 5}`))
	h1 := item("h1", `{"url": "`+site.URL+`"}`)
	h1.ReplyTo = "reply.h1"
	publishBatch(t, conn, "http", h1)

	got := waitResults(t, res, "csv1", "csv2", "s1", "h1")
	for id, r := range got {
		if r.Status != events.StatusOK || r.Attempts != 1 || r.Cached || r.Agent != "test-agent" {
			t.Errorf("%s: status %s, attempts %d, cached %v, agent %q, error %q; "+
				"want ok, 1, false, test-agent", id, r.Status, r.Attempts, r.Cached, r.Agent, r.Error)
		}
		if r.Stages.Run <= 0 || r.Stages.Queued <= 0 || r.Stages.EndToEnd < r.Stages.Run {
			t.Errorf("%s: stages %+v, want positive run and queued, end to end >= run",
				id, r.Stages)
		}
	}

	// The result is cached in Redis under the kind and canonical payload.
	hash, _ := agent.ResultHash("csv", events.Payload(aaplByYear))
	key := cache.ResultKey("csv", hash)
	rdb := redis.NewClient(mustParseRedis(t, redisURL))
	t.Cleanup(func() { rdb.Close() })
	cached, err := rdb.Get(context.Background(), key).Bytes()
	if err != nil || string(cached) != string(got["csv1"].Output) {
		t.Errorf("redis %s = %.40q, %v; want csv1's output", key, cached, err)
	}
	if ttl := rdb.TTL(context.Background(), key).Val(); ttl <= 0 || ttl > 10*time.Minute {
		t.Errorf("redis ttl of %s = %s, want (0, 10m]", key, ttl)
	}

	// The same request, spelled differently, is answered from the cache.
	publishBatch(t, conn, "csv", item("csv3",
		`{"values":["Close","Volume"],"group_prefix":4,"group":"Date","file":"AAPL.csv"}`))
	csv3 := waitResults(t, res, "csv3")["csv3"]
	if !csv3.Cached || csv3.Attempts != 0 || string(csv3.Output) != string(got["csv1"].Output) {
		t.Errorf("csv3: cached %v, attempts %d; want cached, 0 attempts, csv1's output",
			csv3.Cached, csv3.Attempts)
	}

	msg, err := replies.NextMsg(waitTime)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	var reply events.Result
	if err := events.Unmarshal(msg.Data, &reply); err != nil || reply.ID != "h1" {
		t.Errorf("reply = %+v, %v; want the result of h1", reply, err)
	}

	// Timings: the run of csv1 with the duration its result reports, a
	// cache hit and a batch.
	csv1Run := timing.Millis(got["csv1"].Stages.Run.Std())
	testenv.WaitFor(t, waitTime, "csv run, cache hit and batch timings", func() bool {
		sums := summaries(t, timings.all())
		run := sums["csv/ok"] != nil && holds(sums["csv/ok"], csv1Run)
		return run && sums["csv.cache/hit"] != nil && sums["batch/ok"] != nil
	})
}

// summaries decodes the deltas of batches and merges them by "op/status".
func summaries(t *testing.T, batches []events.TimingBatch) map[string]*quantile.Summary {
	t.Helper()
	out := map[string]*quantile.Summary{}
	for _, b := range batches {
		for _, d := range b.Deltas {
			var s quantile.Summary
			if err := s.UnmarshalBinary(d.Summary); err != nil {
				t.Fatalf("timing batch %d, %s: %v", b.Seq, d.Op, err)
			}
			k := d.Op + "/" + d.Status
			if out[k] == nil {
				out[k] = new(quantile.Summary)
			}
			out[k].Merge(&s)
		}
	}
	return out
}

// holds reports whether the exact summary s has a sample equal to v.
func holds(s *quantile.Summary, v float64) bool {
	n := s.Count()
	for i := int64(1); i <= n; i++ {
		if s.Quantile((float64(i)-0.5)/float64(n)) == v {
			return true
		}
	}
	return false
}

func mustParseRedis(t *testing.T, url string) *redis.Options {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

func TestAgentKVCacheCollapsesIdenticalWork(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	store, err := cache.NewKV(context.Background(), conn.JS, "agent_test")
	if err != nil {
		t.Fatal(err)
	}
	res := collect[events.Result](t, conn, events.StreamResults)
	cfg := fastRetries()
	startAgent(t, conn, store, builtins(t, cfg), cfg)

	// Three identical requests at once run once.
	publishBatch(t, conn, "csv", item("a", aaplByYear), item("b", aaplByYear),
		item("c", aaplByYear))
	got := waitResults(t, res, "a", "b", "c")
	runs := 0
	for id, r := range got {
		if r.Status != events.StatusOK || string(r.Output) != string(got["a"].Output) {
			t.Errorf("%s: status %s, error %q; want ok and a's output", id, r.Status, r.Error)
		}
		if !r.Cached {
			runs++
		}
	}
	if runs != 1 {
		t.Errorf("%d of 3 identical requests ran, want 1", runs)
	}

	hash, _ := agent.ResultHash("csv", events.Payload(aaplByYear))
	v, ok, err := store.Get(context.Background(), cache.ResultKey("csv", hash))
	if !ok || err != nil || string(v) != string(got["a"].Output) {
		t.Errorf("kv get = %.40q, %v, %v; want a's output", v, ok, err)
	}

	// Skip bypasses the cache.
	skip := item("d", aaplByYear)
	skip.Cache.Skip = true
	publishBatch(t, conn, "csv", skip)
	if d := waitResults(t, res, "d")["d"]; d.Cached || d.Attempts != 1 {
		t.Errorf("d: cached %v, attempts %d; want a fresh run", d.Cached, d.Attempts)
	}
}

func TestAgentFailures(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	res := collect[events.Result](t, conn, events.StreamResults)
	dead := collect[events.DeadLetter](t, conn, events.StreamDead)
	work := collect[events.WorkRequest](t, conn, events.StreamWork)

	cfg := fastRetries()
	reg := builtins(t, cfg)
	boom := agent.HandlerFunc(func(context.Context, *events.WorkRequest) (events.Payload, error) {
		panic("boom")
	})
	if err := reg.Register("boom", boom, agent.Options{}); err != nil {
		t.Fatal(err)
	}
	startAgent(t, conn, nil, reg, cfg)

	// A batch nobody can read is dead-lettered and does not stop the agent.
	garbage := []byte("\xc1 not msgpack")
	if _, err := conn.JS.Publish(context.Background(), "work.batch.sleep", garbage); err != nil {
		t.Fatal(err)
	}
	late := item("late", `{"ms": 1}`)
	late.Deadline = time.Now().Add(-time.Second)
	// The third run of an item with three attempts is its last.
	lastTry := item("last-try", `{"ms": 1, "fail": "transient"}`)
	lastTry.Attempt = 3
	published := time.Now()
	publishBatch(t, conn, "sleep",
		item("transient", `{"ms": 1, "fail": "transient"}`),
		lastTry,
		item("permanent", `{"ms": 1, "fail": "permanent"}`),
		late,
		item("fine", `{"ms": 1}`))
	publishBatch(t, conn, "nosuch", item("unknown", `{}`))
	publishBatch(t, conn, "boom", item("panic", `{}`))

	tests := []struct {
		id           string
		status       events.Status
		attempts     int
		reason       string // of the dead letter; empty for none
		deadAttempts int
	}{
		{"last-try", events.StatusError, 3, "attempts exhausted", 3},
		{"permanent", events.StatusError, 1, "permanent failure", 1},
		{"late", events.StatusDead, 0, "deadline passed", 0},
		{"unknown", events.StatusDead, 0, "unknown kind", 0},
		{"panic", events.StatusError, 1, "handler panic", 1},
		{"fine", events.StatusOK, 1, "", 0},
	}
	got := waitResults(t, res, "last-try", "permanent", "late", "unknown", "panic", "fine")
	dls := deadByID(t, dead, "last-try", "permanent", "late", "unknown", "panic", "")
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			r := got[tt.id]
			if r.Status != tt.status || r.Attempts != tt.attempts {
				t.Errorf("result: status %s, attempts %d, error %q; want %s, %d",
					r.Status, r.Attempts, r.Error, tt.status, tt.attempts)
			}
			if (r.Error != "") != (tt.status != events.StatusOK) {
				t.Errorf("result error = %q with status %s", r.Error, r.Status)
			}
			dl, ok := dls[tt.id]
			if tt.reason == "" {
				if ok {
					t.Errorf("dead letter %+v, want none", dl)
				}
				return
			}
			var orig events.WorkRequest
			if err := events.Unmarshal(dl.Data, &orig); err != nil || orig.ID != tt.id {
				t.Errorf("dead letter data = %+v, %v; want the item", orig, err)
			}
			if dl.Reason != tt.reason || dl.Service != "agent" || dl.Error == "" ||
				dl.Attempts != tt.deadAttempts || dl.Subject != events.BatchSubject(r.Kind) {
				t.Errorf("dead letter = reason %q, service %q, attempts %d, subject %q, "+
					"error %q; want %q, agent, %d, %s and an error", dl.Reason, dl.Service,
					dl.Attempts, dl.Subject, dl.Error, tt.reason, tt.deadAttempts,
					events.BatchSubject(r.Kind))
			}
		})
	}
	if dl := dls[""]; dl.Reason != "undecodable" || dl.Subject != "work.batch.sleep" {
		t.Errorf("undecodable batch: dead letter reason %q subject %q, want undecodable "+
			"on work.batch.sleep", dl.Reason, dl.Subject)
	}
	waitBatchesSettled(t, conn)
	checkRetrySubmitted(t, work, results(t, res), published)
}

// checkRetrySubmitted checks that the item "transient" of TestAgentFailures
// got no result but went back to the scheduler as attempt 2, due no
// sooner than the smallest first backoff after it was published.
func checkRetrySubmitted(t *testing.T, work *collector[events.WorkRequest],
	got map[string]events.Result, published time.Time) {
	t.Helper()
	if r, ok := got["transient"]; ok {
		t.Errorf("result of a transient failure with attempts left = %+v, want none", r)
	}
	testenv.WaitFor(t, waitTime, "a retry submitted", func() bool {
		return len(work.all()) > 0
	})
	retries := work.all()
	if len(retries) != 1 {
		t.Fatalf("work submitted by the agent = %+v, want one retry", retries)
	}
	retry := retries[0]
	minBackoff := fastRetries().RetryInitial / 2
	if retry.ID != "transient" || retry.Attempt != 2 ||
		retry.NotBefore.Before(published.Add(minBackoff)) {
		t.Errorf("retry = id %s, attempt %d, not before %s; want transient, 2, "+
			"not before %s", retry.ID, retry.Attempt, retry.NotBefore,
			published.Add(minBackoff))
	}
}

// waitBatchesSettled waits until the agent's consumer has nothing pending
// or unacknowledged.
func waitBatchesSettled(t *testing.T, conn *bus.Conn) {
	t.Helper()
	testenv.WaitFor(t, waitTime, "every batch acked", func() bool {
		info := consumerInfo(t, conn)
		return info.NumPending == 0 && info.NumAckPending == 0
	})
}

func consumerInfo(t *testing.T, conn *bus.Conn) *jetstream.ConsumerInfo {
	t.Helper()
	ctx := context.Background()
	cons, err := conn.JS.Consumer(ctx, events.StreamBatches, agent.DefaultDurable)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// gate is a test kind whose items signal their start, then block until
// stopped while the gate is closed, or take hold and succeed while open.
type gate struct {
	started chan string
	hold    time.Duration
	open    atomic.Bool
}

func newGate(hold time.Duration) *gate {
	return &gate{started: make(chan string, 100), hold: hold}
}

func (g *gate) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	g.started <- req.ID
	if !g.open.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	select {
	case <-time.After(g.hold):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return json.Marshal(map[string]string{"id": req.ID})
}

// gateRegistry registers g as the kind "gate".
func gateRegistry(t *testing.T, g *gate) *agent.Registry {
	t.Helper()
	reg := agent.NewRegistry()
	if err := reg.Register("gate", g, agent.Options{}); err != nil {
		t.Fatal(err)
	}
	return reg
}

func (g *gate) waitStarted(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.started:
		case <-time.After(waitTime):
			t.Fatalf("timed out waiting for %d items to start", n)
		}
	}
}

func TestAgentShutdownDrainsInFlightItems(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	res := collect[events.Result](t, conn, events.StreamResults)
	g := newGate(300 * time.Millisecond)
	g.open.Store(true)
	cfg := fastRetries()
	cfg.Workers = 2
	stop := startAgent(t, conn, nil, gateRegistry(t, g), cfg)

	// Two items run when Run is cancelled and finish within the drain
	// time; the other two of the batch have not started, do not start
	// there, and are handed back to the next agent.
	publishBatch(t, conn, "gate", item("z1", `{}`), item("z2", `{}`), item("z3", `{}`),
		item("z4", `{}`))
	g.waitStarted(t, 2)
	if err := stop(); err != nil {
		t.Errorf("Run() error = %v", err)
	}
	if n := len(g.started); n != 0 {
		t.Errorf("stopped agent started %d more items after its stop, want 0", n)
	}
	startAgent(t, conn, nil, gateRegistry(t, g), cfg)

	got := results(t, res)
	testenv.WaitFor(t, waitTime, "results read back", func() bool {
		got = results(t, res)
		return len(got) == 4
	})
	for id, r := range got {
		if r.Status != events.StatusOK {
			t.Errorf("%s: status %s, error %q; want ok", id, r.Status, r.Error)
		}
	}
	waitBatchesSettled(t, conn)
}

func TestAgentShutdownRedeliversUnfinishedBatches(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	res := collect[events.Result](t, conn, events.StreamResults)
	g := newGate(0)
	reg := gateRegistry(t, g)
	cfg := fastRetries()
	cfg.Workers = 2
	cfg.DrainTimeout = 100 * time.Millisecond
	stop := startAgent(t, conn, nil, reg, cfg)

	publishBatch(t, conn, "gate", item("g1", `{}`), item("g2", `{}`), item("g3", `{}`))
	publishBatch(t, conn, "gate", item("g4", `{}`), item("g5", `{}`))
	g.waitStarted(t, 2)

	// Both workers are busy with the first batch, so the second is not
	// pulled. Consumer info lags the publish a little: poll for it.
	testenv.WaitFor(t, 2*time.Second, "1 batch running, 1 waiting", func() bool {
		info := consumerInfo(t, conn)
		return info.NumAckPending == 1 && info.NumPending == 1
	})
	if err := stop(); err != nil {
		t.Errorf("Run() error = %v", err)
	}
	if got := results(t, res); len(got) != 0 {
		t.Errorf("results after a stopped drain: %v, want none", got)
	}

	// Another agent on the same durable finishes every item.
	g.open.Store(true)
	startAgent(t, conn, nil, reg, cfg)
	got := waitResults(t, res, "g1", "g2", "g3", "g4", "g5")
	for id, r := range got {
		if r.Status != events.StatusOK {
			t.Errorf("%s: status %s, error %q; want ok", id, r.Status, r.Error)
		}
	}
	waitBatchesSettled(t, conn)
}

const priceDir = "../../testdata/prices"
