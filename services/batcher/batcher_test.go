package batcher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// received is a batch read back from PERFPIPE_BATCHES.
type received struct {
	subject string
	batch   events.Batch
}

func TestRunBatchesByKind(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	cfg := Config{
		Default: Limits{MaxCount: 8, Linger: 50 * time.Millisecond},
		PerKind: map[string]Limits{"beta": {MaxCount: 5}},
	}
	want := map[string]int{"alpha": 40, "beta": 23}
	ids := publishMixed(t, conn, want)
	svc, _ := start(t, conn, cfg)

	got := readBatches(t, conn, len(ids))
	waitAcked(t, conn, DefaultDurable)

	checkExactlyOnce(t, got, ids)
	maxCount := map[string]int{"alpha": 8, "beta": 5}
	for _, r := range got {
		b := r.batch
		if r.subject != events.BatchSubject(b.Kind) {
			t.Errorf("batch %s on %s, want %s", b.ID, r.subject, events.BatchSubject(b.Kind))
		}
		if n := len(b.Items); n == 0 || n > maxCount[b.Kind] {
			t.Errorf("batch %s of %s has %d items, want 1-%d", b.ID, b.Kind, n, maxCount[b.Kind])
		}
		for _, it := range b.Items {
			if it.Kind != b.Kind {
				t.Errorf("batch %s of %s holds item %s of %s", b.ID, b.Kind, it.ID, it.Kind)
			}
			if it.Trace.Batched.IsZero() {
				t.Errorf("item %s: Trace.Batched not set", it.ID)
			}
		}
	}
	checkStreamHolds(t, conn, events.StreamBatches, len(got))

	st := svc.Stats()
	if st.Items != int64(len(ids)) || st.Batches != int64(len(got)) || st.Dead != 0 {
		t.Errorf("Stats() = %+v, want %d items in %d batches, 0 dead", st, len(ids), len(got))
	}
	testenv.WaitFor(t, 5*time.Second, "batch timings on the telemetry stream", func() bool {
		return timedCount(t, conn, opBatch) >= int64(len(got))
	})
}

func TestRunLoneItemAfterLinger(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	const linger = 200 * time.Millisecond
	start(t, conn, Config{Default: Limits{Linger: linger}})

	sent := time.Now()
	publishReady(t, conn, "solo", "solo-1")
	got := readBatches(t, conn, 1)

	b := got[0].batch
	if len(got) != 1 || len(b.Items) != 1 || b.Items[0].ID != "solo-1" {
		t.Fatalf("got %d batches, first %+v; want one batch with solo-1", len(got), b)
	}
	if waited := b.Created.Sub(sent); waited < linger {
		t.Errorf("batch created %s after the item was sent, want at least the linger %s",
			waited, linger)
	}
	waitAcked(t, conn, DefaultDurable)
}

func TestRunDeadLettersBadInput(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	wrongType, err := events.Marshal(&events.Result{ID: "r1", Kind: "x"})
	if err != nil {
		t.Fatal(err)
	}
	invalid, err := events.Marshal(&events.WorkRequest{ID: "p42", Kind: "x", Priority: 42})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		data       []byte
		wantReason string
		wantID     string
	}{
		{"garbage", []byte("\xc1 not msgpack"), "undecodable", ""},
		{"bad json", []byte(`{"id": `), "undecodable", ""},
		{"wrong type", wrongType, "wrong type", ""},
		{"invalid priority", invalid, "invalid request", "p42"},
	}
	for _, tt := range tests {
		publishRaw(t, conn, events.ReadySubject("x"), tt.data)
	}
	svc, _ := start(t, conn, Config{Default: Limits{Linger: 20 * time.Millisecond}})

	dead := readDead(t, conn, len(tests))
	for i, tt := range tests {
		dl := dead[i]
		if dl.Reason != tt.wantReason || dl.Service != serviceName || dl.Kind != "x" ||
			dl.Subject != "work.ready.x" || dl.ID != tt.wantID || dl.Error == "" {
			t.Errorf("%s: dead letter %+v, want reason %q, service batcher, kind x, "+
				"subject work.ready.x, id %q and an error", tt.name, dl, tt.wantReason, tt.wantID)
		}
		if string(dl.Data) != string(tt.data) {
			t.Errorf("%s: dead letter data %q, want %q", tt.name, dl.Data, tt.data)
		}
	}

	// Good items after the bad ones still batch.
	ids := []string{"x-1", "x-2", "x-3"}
	for _, id := range ids {
		publishReady(t, conn, "x", id)
	}
	checkExactlyOnce(t, readBatches(t, conn, len(ids)), ids)
	waitAcked(t, conn, DefaultDurable)
	if st := svc.Stats(); st.Dead != int64(len(tests)) {
		t.Errorf("Stats().Dead = %d, want %d", st.Dead, len(tests))
	}
}

func TestRunShutdownFlushesOpenBatch(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	cfg := Config{
		Default: Limits{MaxCount: 100, Linger: time.Minute},
		AckWait: 2 * time.Minute,
	}
	ids := []string{"s-1", "s-2", "s-3", "s-4", "s-5"}
	for _, id := range ids {
		publishReady(t, conn, "slow", id)
	}
	_, stop := start(t, conn, cfg)
	testenv.WaitFor(t, 10*time.Second, "items delivered to the batcher", func() bool {
		info := consumerInfo(t, conn, DefaultDurable)
		return info.NumAckPending == len(ids)
	})
	if n := subjectCount(t, conn, events.StreamBatches, events.BatchAll); n != 0 {
		t.Fatalf("%d batches before shutdown, want 0 while lingering", n)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
	checkExactlyOnce(t, readBatches(t, conn, len(ids)), ids)
	waitAcked(t, conn, DefaultDurable)
}

// TestRunRedeliversWhenPublishFails removes the batch stream so that every
// publish fails, then restores it: the items come back and are batched
// once.
func TestRunRedeliversWhenPublishFails(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	if err := conn.JS.DeleteStream(ctx, events.StreamBatches); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
	ids := []string{"f-1", "f-2", "f-3"}
	for _, id := range ids {
		publishReady(t, conn, "flaky", id)
	}
	svc, _ := start(t, conn, Config{
		Default:    Limits{Linger: 10 * time.Millisecond},
		RetryDelay: 100 * time.Millisecond,
	})

	testenv.WaitFor(t, 10*time.Second, "a failed batch publish", func() bool {
		return svc.Stats().PublishErrors > 0
	})
	if err := conn.EnsureStreams(ctx); err != nil {
		t.Fatalf("restore streams: %v", err)
	}
	checkExactlyOnce(t, readBatches(t, conn, len(ids)), ids)
	waitAcked(t, conn, DefaultDurable)
}

func TestNewRejects(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	tests := []struct {
		name string
		conn *bus.Conn
		cfg  Config
	}{
		{"nil conn", nil, Config{}},
		{"invalid config", conn, Config{Durable: "a b"}},
		{"max bytes above max payload", conn, Config{Default: Limits{MaxBytes: 64 << 20}}},
	}
	for _, tt := range tests {
		if _, err := New(tt.conn, tt.cfg, testenv.Logger(t)); err == nil {
			t.Errorf("%s: New() = nil error, want one", tt.name)
		}
	}
}

// start runs a batcher until the test ends. stop cancels it and returns
// Run's error, or an error if Run does not return within the shutdown
// timeout and 5 s; cleanup reports either.
func start(t *testing.T, conn *bus.Conn, cfg Config) (*Service, func() error) {
	t.Helper()
	svc, err := New(conn, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return svc, testenv.Run(t, svc, svc.cfg.ShutdownTimeout+5*time.Second)
}

// publishMixed publishes counts[kind] ready items of each kind,
// interleaved, and returns their IDs.
func publishMixed(t *testing.T, conn *bus.Conn, counts map[string]int) []string {
	t.Helper()
	var ids []string
	for i := 0; len(ids) < total(counts); i++ {
		for _, kind := range []string{"alpha", "beta"} {
			if i < counts[kind] {
				id := fmt.Sprintf("%s-%d", kind, i)
				publishReady(t, conn, kind, id)
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func total(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

func publishReady(t *testing.T, conn *bus.Conn, kind, id string) {
	t.Helper()
	req := &events.WorkRequest{
		ID: id, Kind: kind,
		Payload: events.Payload(`{"n":1}`),
		Trace:   events.Trace{Released: time.Now()},
	}
	if err := conn.Publish(context.Background(), events.ReadySubject(kind), req, id); err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
}

func publishRaw(t *testing.T, conn *bus.Conn, subject string, data []byte) {
	t.Helper()
	if _, err := conn.JS.Publish(context.Background(), subject, data); err != nil {
		t.Fatalf("publish raw to %s: %v", subject, err)
	}
}

// readBatches reads PERFPIPE_BATCHES from the start with an ordered
// consumer until the batches hold at least items items.
func readBatches(t *testing.T, conn *bus.Conn, items int) []received {
	t.Helper()
	var got []received
	n := 0
	readStream(t, conn, events.StreamBatches, "batched items", func(msg jetstream.Msg) bool {
		var b events.Batch
		if err := events.Unmarshal(msg.Data(), &b); err != nil {
			t.Fatalf("decode batch on %s: %v", msg.Subject(), err)
		}
		got = append(got, received{subject: msg.Subject(), batch: b})
		n += len(b.Items)
		return n >= items
	})
	return got
}

// readDead reads the first n dead letters.
func readDead(t *testing.T, conn *bus.Conn, n int) []events.DeadLetter {
	t.Helper()
	var got []events.DeadLetter
	readStream(t, conn, events.StreamDead, "dead letters", func(msg jetstream.Msg) bool {
		var dl events.DeadLetter
		if err := events.Unmarshal(msg.Data(), &dl); err != nil {
			t.Fatalf("decode dead letter: %v", err)
		}
		got = append(got, dl)
		return len(got) >= n
	})
	return got
}

// readStream hands each message of stream to take, in order, until take
// returns true.
func readStream(t *testing.T, conn *bus.Conn, stream, what string, take func(jetstream.Msg) bool) {
	t.Helper()
	ctx := context.Background()
	cons, err := conn.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", stream, err)
	}
	done := false
	testenv.WaitFor(t, 15*time.Second, what, func() bool {
		msgs, err := cons.FetchNoWait(100)
		if err != nil {
			return false
		}
		for msg := range msgs.Messages() {
			if !done {
				done = take(msg)
			}
		}
		return done
	})
}

// checkExactlyOnce fails unless the batches hold each of ids exactly once.
func checkExactlyOnce(t *testing.T, got []received, ids []string) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range got {
		for _, it := range r.batch.Items {
			seen[it.ID]++
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("item %s in %d batches, want 1", id, seen[id])
		}
		delete(seen, id)
	}
	for id, n := range seen {
		t.Errorf("unexpected item %s in %d batches", id, n)
	}
}

// waitAcked waits until the consumer has nothing pending or unacked.
func waitAcked(t *testing.T, conn *bus.Conn, durable string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "every ready item acked", func() bool {
		info := consumerInfo(t, conn, durable)
		return info.NumAckPending == 0 && info.NumPending == 0
	})
}

func consumerInfo(t *testing.T, conn *bus.Conn, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx := context.Background()
	cons, err := conn.JS.Consumer(ctx, events.StreamReady, durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return &jetstream.ConsumerInfo{NumAckPending: -1}
	}
	if err != nil {
		t.Fatalf("consumer %s: %v", durable, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info %s: %v", durable, err)
	}
	return info
}

// checkStreamHolds fails unless stream holds exactly n messages, so that
// no batch went unread.
func checkStreamHolds(t *testing.T, conn *bus.Conn, stream string, n int) {
	t.Helper()
	s, err := conn.JS.Stream(context.Background(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatalf("stream info %s: %v", stream, err)
	}
	if got := info.State.Msgs; got != uint64(n) {
		t.Errorf("stream %s holds %d messages, want %d", stream, got, n)
	}
}

// subjectCount is how many messages stream holds on subjects matching
// filter.
// timedCount is how many samples of op the batcher's timing batches on
// the telemetry stream hold.
func timedCount(t *testing.T, conn *bus.Conn, op string) int64 {
	t.Helper()
	subject := events.BatchTimingSubject(serviceName)
	n := subjectCount(t, conn, events.StreamTelemetry, subject)
	if n == 0 {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamTelemetry,
		jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", subject, err)
	}
	msgs, err := cons.Fetch(int(n), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatalf("fetch %s: %v", subject, err)
	}

	var count int64
	for msg := range msgs.Messages() {
		var b events.TimingBatch
		if err := events.Unmarshal(msg.Data(), &b); err != nil {
			t.Fatalf("decode %s: %v", subject, err)
		}
		for _, d := range b.Deltas {
			var sum quantile.Summary
			if err := sum.UnmarshalBinary(d.Summary); err != nil {
				t.Fatalf("timing batch %d, %s: %v", b.Seq, d.Op, err)
			}
			if d.Op == op {
				count += sum.Count()
			}
		}
	}
	return count
}

func subjectCount(t *testing.T, conn *bus.Conn, stream, filter string) uint64 {
	t.Helper()
	s, err := conn.JS.Stream(context.Background(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatalf("stream info %s: %v", stream, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}
