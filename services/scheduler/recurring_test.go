package scheduler

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// submissions records the submissions of testKind that the WORK stream
// stored: a copy that the stream dropped as a duplicate is not there.
type submissions struct {
	c  *bus.Conn
	tl *tail
}

func watchSubmits(t testing.TB, c *bus.Conn) *submissions {
	t.Helper()
	return &submissions{c: c, tl: follow(t, c, events.StreamWork, events.SubmitSubject(testKind))}
}

// all returns the stored submissions once the tail has read as many as
// the stream holds.
func (s *submissions) all(t testing.TB) []events.WorkRequest {
	t.Helper()
	subject := events.SubmitSubject(testKind)
	testenv.WaitFor(t, waitTimeout, "the tail of "+subject, func() bool {
		st, err := s.c.JS.Stream(context.Background(), events.StreamWork)
		if err != nil {
			t.Fatalf("stream %s: %v", events.StreamWork, err)
		}
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatalf("stream info %s: %v", events.StreamWork, err)
		}
		return uint64(len(s.tl.all())) >= info.State.Subjects[subject]
	})
	var out []events.WorkRequest
	for _, m := range s.tl.all() {
		var req events.WorkRequest
		if err := events.Unmarshal(m.data, &req); err != nil {
			t.Errorf("submitted message: %v", err)
			continue
		}
		out = append(out, req)
	}
	return out
}

// ticks returns the tick of each submission, checking its ID and
// NotBefore against def, and fails on a tick submitted twice.
func (s *submissions) ticks(t testing.TB, def string) []time.Time {
	t.Helper()
	seen := map[string]bool{}
	var out []time.Time
	for _, req := range s.all(t) {
		if seen[req.ID] {
			t.Errorf("tick %s submitted twice", req.ID)
		}
		seen[req.ID] = true
		unix, ok := strings.CutPrefix(req.ID, def+".")
		sec, err := strconv.ParseInt(unix, 10, 64)
		if !ok || err != nil {
			t.Fatalf("id %q: want %s.<unix seconds>", req.ID, def)
		}
		if got, want := req.NotBefore.Unix(), sec; got != want {
			t.Errorf("id %s: not before %d, want %d", req.ID, got, want)
		}
		out = append(out, req.NotBefore)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// addEvery stores a definition that submits testKind every interval,
// created on a whole second.
func addEvery(t testing.TB, c *bus.Conn, id string, every time.Duration) *events.Recurring {
	t.Helper()
	ctx := context.Background()
	store, err := OpenRecurring(ctx, c.JS, DefaultRecurringBucket)
	if err != nil {
		t.Fatal(err)
	}
	def := &events.Recurring{
		ID: id, Every: events.Duration(every), Created: time.Now().Truncate(time.Second),
		Work: events.WorkTemplate{Kind: testKind, Priority: 3, Payload: []byte(`{"n":1}`)},
	}
	if err := store.Add(ctx, def); err != nil {
		t.Fatalf("add: %v", err)
	}
	return def
}

// streamCount is how many messages the WORK stream holds for def.
func streamCount(t testing.TB, tl *tail, def string) int {
	t.Helper()
	n := 0
	for _, m := range tl.all() {
		var req events.WorkRequest
		if events.Unmarshal(m.data, &req) == nil && strings.HasPrefix(req.ID, def+".") {
			n++
		}
	}
	return n
}

func TestRecurringEverySecond(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	subs := watchSubmits(t, conn)
	work := follow(t, conn, events.StreamWork, events.SubmitAll)
	addEvery(t, conn, "tick", time.Second)

	r := start(t, url, Config{})
	time.Sleep(3500 * time.Millisecond) // the window measured, not a wait for an event
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	ticks := subs.ticks(t, "tick")
	if n := len(ticks); n < 2 || n > 4 {
		t.Errorf("fired %d times in 3.5 s, want 3 ± 1: %v", n, ticks)
	}
	for i := 1; i < len(ticks); i++ {
		if d := ticks[i].Sub(ticks[i-1]); d != time.Second {
			t.Errorf("ticks %v and %v are %s apart, want 1s", ticks[i-1], ticks[i], d)
		}
	}
	testenv.WaitFor(t, waitTimeout, "submissions in WORK", func() bool {
		return streamCount(t, work, "tick") == len(ticks)
	})
	if got := subs.all(t)[0]; got.Priority != 3 || string(got.Payload) != `{"n":1}` {
		t.Errorf("request = priority %d payload %s, want the template's", got.Priority,
			got.Payload)
	}
}

// TestRecurringRestarts stops and starts the scheduler faster than the
// interval: every tick still fires once, on time or at the next start.
func TestRecurringRestarts(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	subs := watchSubmits(t, conn)
	def := addEvery(t, conn, "restart", 2*time.Second)

	for range 6 {
		r := start(t, url, Config{})
		time.Sleep(700 * time.Millisecond) // a short run
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // down, maybe over a tick
	}

	// One more start catches up the tick missed last, if any.
	from := time.Now()
	r := start(t, url, Config{})
	sched, _ := def.Schedule()
	want := events.LatestTick(sched, def.Created, from)
	testenv.WaitFor(t, waitTimeout, "the last missed tick", func() bool {
		ticks := subs.ticks(t, def.ID)
		return len(ticks) > 0 && !ticks[len(ticks)-1].Before(want)
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	ticks := subs.ticks(t, def.ID)
	var expect []time.Time
	for tk := sched.Next(def.Created); !tk.After(want); tk = sched.Next(tk) {
		expect = append(expect, tk)
	}
	if len(ticks) < len(expect) || !slices.EqualFunc(ticks[:len(expect)], expect, time.Time.Equal) {
		t.Errorf("ticks fired = %v, want each of %v once", ticks, expect)
	}
}

// TestRecurringSubmittedNotClaimed starts a scheduler after an instance
// submitted a tick and died before it claimed it: the tick is fired
// again, the stream keeps one copy and the bucket records the tick.
func TestRecurringSubmittedNotClaimed(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	subs := watchSubmits(t, conn)
	ctx := context.Background()
	store, err := OpenRecurring(ctx, conn.JS, DefaultRecurringBucket)
	if err != nil {
		t.Fatal(err)
	}
	def := &events.Recurring{
		ID: "orphan", Every: events.Duration(time.Hour),
		Created: time.Now().Add(-61 * time.Minute).Truncate(time.Second),
		Work:    events.WorkTemplate{Kind: testKind},
	}
	if err := store.Put(ctx, def); err != nil {
		t.Fatal(err)
	}
	tick := def.Created.Add(time.Hour)
	req := def.Request(tick)
	if err := conn.Publish(ctx, events.SubmitSubject(testKind), req,
		events.SubmitMsgID(req)); err != nil {
		t.Fatal(err)
	}

	r := start(t, url, Config{})
	testenv.WaitFor(t, waitTimeout, "the tick recorded as fired", func() bool {
		list, err := store.List(ctx)
		return err == nil && len(list) == 1 && list[0].LastFired.Equal(tick)
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	ticks := subs.ticks(t, def.ID) // fails on a tick stored twice
	if len(ticks) != 1 || !ticks[0].Equal(tick) {
		t.Errorf("ticks stored = %v, want %v once", ticks, tick)
	}
}

// TestRecurringTwoInstances runs two schedulers on one bucket: each tick
// is submitted by one of them.
func TestRecurringTwoInstances(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	subs := watchSubmits(t, conn)
	work := follow(t, conn, events.StreamWork, events.SubmitAll)
	addEvery(t, conn, "pair", time.Second)

	a := start(t, url, Config{})
	b := start(t, url, Config{})
	time.Sleep(3500 * time.Millisecond) // the window measured
	for _, r := range []*running{a, b} {
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
	}

	ticks := subs.ticks(t, "pair") // fails on a tick published twice
	if n := len(ticks); n < 2 || n > 4 {
		t.Errorf("fired %d times in 3.5 s, want 3 ± 1", n)
	}
	testenv.WaitFor(t, waitTimeout, "submissions in WORK", func() bool {
		return streamCount(t, work, "pair") == len(ticks)
	})
}

func TestRecurringStore(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	store, err := OpenRecurring(ctx, conn.JS, DefaultRecurringBucket)
	if err != nil {
		t.Fatal(err)
	}

	bad := &events.Recurring{ID: "bad", Cron: "61 * * * *",
		Work: events.WorkTemplate{Kind: testKind}}
	if err := store.Add(ctx, bad); !errors.Is(err, events.ErrInvalid) ||
		!strings.Contains(err.Error(), `cron "61 * * * *"`) {
		t.Errorf("add bad cron: err = %v, want ErrInvalid naming the spec", err)
	}

	def := &events.Recurring{ID: "nightly", Cron: "0 3 * * *", Created: time.Now(),
		Work: events.WorkTemplate{Kind: testKind}}
	if err := store.Add(ctx, def); err != nil {
		t.Fatalf("add: %v", err)
	}
	if err := store.Add(ctx, def); !errors.Is(err, ErrRecurringExists) {
		t.Errorf("add twice: err = %v, want ErrRecurringExists", err)
	}
	tick := time.Date(2025, 1, 2, 3, 0, 0, 0, time.UTC)
	if _, err := store.claim(ctx, def.ID, tick, 0); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if _, err := store.claim(ctx, def.ID, tick, 0); !errors.Is(err, errClaimLost) {
		t.Errorf("second claim: err = %v, want errClaimLost", err)
	}

	list, err := store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "nightly" || !list[0].LastFired.Equal(tick) {
		t.Errorf("list = %+v, want nightly last fired %v", list, tick)
	}
	if err := store.Remove(ctx, "nightly"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := store.Remove(ctx, "nightly"); !errors.Is(err, ErrRecurringNotFound) {
		t.Errorf("remove twice: err = %v, want ErrRecurringNotFound", err)
	}
	if list, err := store.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("list after remove = %v, %v; want none", list, err)
	}
}

// TestRecurringPaused checks that a paused definition submits nothing.
func TestRecurringPaused(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	subs := watchSubmits(t, conn)
	store, err := OpenRecurring(context.Background(), conn.JS, DefaultRecurringBucket)
	if err != nil {
		t.Fatal(err)
	}
	def := &events.Recurring{ID: "held", Every: events.Duration(time.Second), Paused: true,
		Created: time.Now().Add(-time.Minute), Work: events.WorkTemplate{Kind: testKind}}
	if err := store.Put(context.Background(), def); err != nil {
		t.Fatal(err)
	}

	r := start(t, url, Config{})
	time.Sleep(1500 * time.Millisecond) // the window measured
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if got := subs.all(t); len(got) != 0 {
		t.Errorf("paused definition submitted %d requests, want none", len(got))
	}
}

// TestLookupRecurring checks that LookupRecurring opens a bucket only once
// OpenRecurring made it, and creates none itself.
func TestLookupRecurring(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	const bucket = "lookup_recurring"

	_, err := LookupRecurring(ctx, conn.JS, bucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("LookupRecurring of a missing bucket: error = %v, want ErrBucketNotFound", err)
	}
	if _, err := conn.JS.KeyValue(ctx, bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("bucket after LookupRecurring: error = %v, want still missing", err)
	}

	created, err := OpenRecurring(ctx, conn.JS, bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := created.Put(ctx, &events.Recurring{ID: "x", Every: events.Duration(time.Minute),
		Created: time.Now(), Work: events.WorkTemplate{Kind: testKind}}); err != nil {
		t.Fatal(err)
	}
	store, err := LookupRecurring(ctx, conn.JS, bucket)
	if err != nil {
		t.Fatalf("LookupRecurring of an existing bucket: %v", err)
	}
	if list, err := store.List(ctx); err != nil || len(list) != 1 || list[0].ID != "x" {
		t.Errorf("list = %+v, %v; want x", list, err)
	}
}
