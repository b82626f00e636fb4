package deadletter

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestFilterMatch(t *testing.T) {
	at := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	dl := &events.DeadLetter{
		ID: "a1", Kind: "sleep", Service: "scheduler", Reason: "unknown kind", Time: at,
	}
	tests := []struct {
		name string
		f    Filter
		want bool
	}{
		{"zero", Filter{}, true},
		{"id", Filter{IDs: []string{"x", "a1"}}, true},
		{"other id", Filter{IDs: []string{"x"}}, false},
		{"kind", Filter{Kind: "sleep"}, true},
		{"other kind", Filter{Kind: "http"}, false},
		{"reason any case", Filter{Reason: "UNKNOWN"}, true},
		{"other reason", Filter{Reason: "exhausted"}, false},
		{"service", Filter{Service: "scheduler"}, true},
		{"other service", Filter{Service: "agent"}, false},
		{"since", Filter{Since: at}, true},
		{"since after", Filter{Since: at.Add(time.Second)}, false},
		{"until", Filter{Until: at}, true},
		{"until before", Filter{Until: at.Add(-time.Second)}, false},
		{"all of them", Filter{IDs: []string{"a1"}, Kind: "sleep", Service: "agent"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Match(dl); got != tt.want {
				t.Errorf("Match(%+v) = %v, want %v", tt.f, got, tt.want)
			}
		})
	}
}

func TestRequest(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		dl       events.DeadLetter
		wantID   string
		wantKind string
		wantErr  string
	}{
		{
			name:   "kept as is",
			dl:     deadLetter(t, "a", "sleep", &events.WorkRequest{ID: "a", Kind: "sleep"}),
			wantID: "a", wantKind: "sleep",
		},
		{
			name: "kind from subject, id from scheduler",
			dl: events.DeadLetter{ID: "w-7", Kind: "sleep", Subject: "work.submit.csv",
				Data: []byte(`{"payload":{"ms":1}}`)},
			wantID: "w-7", wantKind: "csv",
		},
		{
			name:   "no id anywhere",
			dl:     events.DeadLetter{Kind: "http", Data: []byte(`{}`)},
			wantID: "dead-9", wantKind: "http",
		},
		{name: "no data", dl: events.DeadLetter{ID: "a"}, wantErr: "no original message"},
		{
			name:    "undecodable",
			dl:      events.DeadLetter{ID: "a", Data: []byte("\xc1nope")},
			wantErr: "not a work request",
		},
		{
			name: "wrong type",
			dl: deadLetter(t, "a", "sleep",
				&events.Result{ID: "a", Kind: "sleep", Status: events.StatusOK}),
			wantErr: "not a work request",
		},
		{
			name:    "invalid",
			dl:      deadLetter(t, "a", "sleep", &events.WorkRequest{Kind: "x", Priority: 20}),
			wantErr: "priority",
		},
		{
			name: "past deadline",
			dl: deadLetter(t, "a", "sleep",
				&events.WorkRequest{Kind: "sleep", Deadline: now.Add(-time.Minute)}),
			wantErr: "deadline passed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := Request(Entry{Seq: 9, DeadLetter: tt.dl}, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Request: %v", err)
			}
			if req.ID != tt.wantID || req.Kind != tt.wantKind {
				t.Errorf("id, kind = %q, %q, want %q, %q", req.ID, req.Kind, tt.wantID, tt.wantKind)
			}
			if req.Attempt != 0 || !req.Trace.Submitted.Equal(now) || !req.Trace.Accepted.IsZero() {
				t.Errorf("attempt %d, trace %+v: want reset, submitted now", req.Attempt, req.Trace)
			}
		})
	}
}

// deadLetter is a dead letter of kind holding ev, encoded as on the wire.
func deadLetter(t testing.TB, id, kind string, ev events.Event) events.DeadLetter {
	t.Helper()
	data, err := events.Marshal(ev)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return events.DeadLetter{ID: id, Kind: kind, Subject: events.SubmitSubject(kind), Data: data}
}

// fixture publishes five dead letters, an hour apart from base on, and
// returns base. Seq 1-2 hold work requests, 3 undecodable data, 4 no data,
// 5 is not a dead letter at all.
func fixture(t *testing.T, conn *bus.Conn) time.Time {
	t.Helper()
	ctx := context.Background()
	base := time.Now().Add(-10 * time.Hour).Truncate(time.Second)
	req := func(id, kind string) *events.WorkRequest {
		return &events.WorkRequest{
			ID: id, Kind: kind, Payload: events.Payload(`{"ms":1}`), Attempt: 3,
			Trace: events.Trace{Submitted: base, Accepted: base},
		}
	}
	letters := []events.DeadLetter{
		deadLetter(t, "a1", "sleep", req("a1", "sleep")),
		deadLetter(t, "a2", "http", req("a2", "http")),
		{ID: "b1", Kind: "sleep", Data: []byte("\xc1\x00garbage")},
		{ID: "c1", Kind: "csv"},
	}
	services := []string{"scheduler", "agent", "scheduler", "agent"}
	reasons := []string{"unknown kind", "attempts exhausted", "undecodable", "Unknown kind"}
	for i := range letters {
		dl := &letters[i]
		dl.Service, dl.Reason, dl.Error = services[i], reasons[i], "error "+dl.ID
		dl.Time, dl.Attempts = base.Add(time.Duration(i)*time.Hour), i+1
		if err := conn.DeadLetter(ctx, dl); err != nil {
			t.Fatalf("dead letter %s: %v", dl.ID, err)
		}
	}
	if _, err := conn.JS.Publish(ctx, events.DeadSubject("raw"), []byte("not msgpack")); err != nil {
		t.Fatalf("publish raw: %v", err)
	}
	return base
}

func seqs(entries []Entry) []uint64 {
	var out []uint64
	for _, e := range entries {
		out = append(out, e.Seq)
	}
	return out
}

func TestList(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()

	if got, err := List(ctx, conn.JS, Filter{}); err != nil || len(got) != 0 {
		t.Fatalf("List of an empty stream = %v, %v; want nothing", got, err)
	}
	base := fixture(t, conn)

	tests := []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"all", Filter{}, []uint64{1, 2, 3, 4, 5}},
		{"one id", Filter{IDs: []string{"a2"}}, []uint64{2}},
		{"ids", Filter{IDs: []string{"a1", "c1", "zz"}}, []uint64{1, 4}},
		{"kind", Filter{Kind: "sleep"}, []uint64{1, 3}},
		{"kind without any", Filter{Kind: "nothing"}, nil},
		{"reason", Filter{Reason: "unknown kind"}, []uint64{1, 4}},
		{"service", Filter{Service: "agent"}, []uint64{2, 4}},
		{"since", Filter{Since: base.Add(2 * time.Hour)}, []uint64{3, 4, 5}},
		{"until", Filter{Until: base.Add(time.Hour)}, []uint64{1, 2}},
		{"range", Filter{Since: base.Add(time.Hour), Until: base.Add(2 * time.Hour)}, []uint64{2, 3}},
		{"limit", Filter{Limit: 2}, []uint64{1, 2}},
		{"limit with filter", Filter{Service: "agent", Limit: 1}, []uint64{2}},
		{"undecodable entry", Filter{Reason: ReasonUndecodable}, []uint64{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := List(ctx, conn.JS, tt.f)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if diff := cmp.Diff(tt.want, seqs(got)); diff != "" {
				t.Errorf("List(%+v) seqs (-want +got):\n%s", tt.f, diff)
			}
		})
	}

	got, err := List(ctx, conn.JS, Filter{IDs: []string{"a1"}})
	if err != nil || len(got) != 1 {
		t.Fatalf("List a1 = %v, %v", got, err)
	}
	if dl := got[0].DeadLetter; dl.Service != "scheduler" || dl.Attempts != 1 ||
		dl.Error != "error a1" || got[0].Subject != "work.dead.sleep" {
		t.Errorf("entry a1 = %+v", got[0])
	}

	stream, err := conn.JS.Stream(ctx, events.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("consumers left on %s = %d, want 0", events.StreamDead, info.State.Consumers)
	}
	if err := conn.JS.DeleteStream(ctx, events.StreamDead); err != nil {
		t.Fatal(err)
	}
	if _, err := List(ctx, conn.JS, Filter{}); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("List without the stream: error = %v, want ErrStreamNotFound", err)
	}
}

func TestReplay(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	fixture(t, conn)
	entries, err := List(ctx, conn.JS, Filter{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}

	want := []Status{StatusWouldReplay, StatusWouldReplay, StatusNotReplayable,
		StatusNotReplayable, StatusNotReplayable}
	dry, err := Replay(ctx, conn, entries, ReplayOptions{DryRun: true, Delete: true})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	checkStatuses(t, "dry run", dry, want)
	checkWorkMsgs(t, conn, 0)

	first, err := Replay(ctx, conn, entries, ReplayOptions{})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	want[0], want[1] = StatusReplayed, StatusReplayed
	checkStatuses(t, "first replay", first, want)
	for i, reason := range []string{"not a work request", "no original message",
		"not a work request"} {
		if got := first[i+2].Reason; !strings.Contains(got, reason) {
			t.Errorf("reason of seq %d = %q, want it to mention %q", i+3, got, reason)
		}
	}
	checkWorkMsgs(t, conn, 2)
	checkReplayed(t, conn, 1, "work.submit.sleep", "a1.replay1", "a1")
	checkReplayed(t, conn, 2, "work.submit.http", "a2.replay2", "a2")

	// A duplicate was replayed by the first run, not this one: --delete
	// keeps it.
	second, err := Replay(ctx, conn, entries[:2], ReplayOptions{Delete: true})
	if err != nil {
		t.Fatalf("second replay: %v", err)
	}
	checkStatuses(t, "second replay", second, []Status{StatusDuplicate, StatusDuplicate})
	checkWorkMsgs(t, conn, 2)
	if second[0].Deleted || second[1].Deleted {
		t.Errorf("deleted = %v, %v; want neither", second[0].Deleted, second[1].Deleted)
	}
	left, err := List(ctx, conn.JS, Filter{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if diff := cmp.Diff([]uint64{1, 2, 3, 4, 5}, seqs(left)); diff != "" {
		t.Errorf("entries left after a duplicate delete (-want +got):\n%s", diff)
	}
}

func checkStatuses(t *testing.T, what string, outs []Outcome, want []Status) {
	t.Helper()
	got := make([]Status, len(outs))
	for i, o := range outs {
		got[i] = o.Status
		if o.Err != nil {
			t.Errorf("%s: seq %d: %v", what, o.Entry.Seq, o.Err)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s statuses (-want +got):\n%s", what, diff)
	}
}

func checkWorkMsgs(t *testing.T, conn *bus.Conn, want uint64) {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != want {
		t.Errorf("%s holds %d messages, want %d", events.StreamWork, info.State.Msgs, want)
	}
}

// checkReplayed checks the work stream message at seq: subject, msg id, and
// a request with its attempts and trace reset.
func checkReplayed(t *testing.T, conn *bus.Conn, seq uint64, subject, msgID, id string) {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatalf("get %s seq %d: %v", events.StreamWork, seq, err)
	}
	if msg.Subject != subject || msg.Header.Get(jetstream.MsgIDHeader) != msgID {
		t.Errorf("seq %d: subject %s, msg id %q; want %s, %q", seq, msg.Subject,
			msg.Header.Get(jetstream.MsgIDHeader), subject, msgID)
	}
	var req events.WorkRequest
	if err := events.Unmarshal(msg.Data, &req); err != nil {
		t.Fatalf("seq %d: %v", seq, err)
	}
	if req.ID != id || req.Attempt != 0 || !req.Trace.Accepted.IsZero() ||
		time.Since(req.Trace.Submitted) > time.Minute || string(req.Payload) != `{"ms":1}` {
		t.Errorf("replayed request = %+v", req)
	}
}

// replayFixture publishes dead letters as a failing replay leaves them:
// the originals of r1 (sleep) and r2 (http) at seq 1-2, undecodable data
// at 3, then the dead letters of their replays, which failed again: r1
// from seq 1 at 4 and 6, r2 from seq 2 at 5.
func replayFixture(t *testing.T, conn *bus.Conn) {
	t.Helper()
	ctx := context.Background()
	req := func(id, kind string, replay uint64) *events.WorkRequest {
		return &events.WorkRequest{
			ID: id, Kind: kind, Payload: events.Payload(`{"ms":1}`), Attempt: 1,
			Replay: replay,
		}
	}
	letters := []events.DeadLetter{
		deadLetter(t, "r1", "sleep", req("r1", "sleep", 0)),
		deadLetter(t, "r2", "http", req("r2", "http", 0)),
		{ID: "b1", Kind: "sleep", Data: []byte("\xc1\x00garbage")},
		deadLetter(t, "r1", "sleep", req("r1", "sleep", 1)),
		deadLetter(t, "r2", "http", req("r2", "http", 2)),
		deadLetter(t, "r1", "sleep", req("r1", "sleep", 1)),
	}
	for i := range letters {
		dl := &letters[i]
		dl.Service, dl.Reason, dl.Time = "agent", "permanent failure", time.Now()
		if err := conn.DeadLetter(ctx, dl); err != nil {
			t.Fatalf("dead letter %s: %v", dl.ID, err)
		}
	}
}

// TestReplaySuperseded replays, twice, dead letters of which some are the
// same request failing again after a replay: each request is published
// once, from its earliest dead letter, and the second run publishes
// nothing.
func TestReplaySuperseded(t *testing.T) {
	const (
		re  = StatusReplayed
		dup = StatusDuplicate
		sup = StatusSuperseded
		not = StatusNotReplayable
	)
	tests := []struct {
		name    string
		f       Filter
		reverse bool    // hand Replay the entries newest first
		delete  [2]bool // ReplayOptions.Delete of the first and second run
		drop    uint64  // a dead letter deleted before replaying
		first   []Status
		second  []Status
		by      []uint64 // SupersededBy per entry
		msgIDs  []string // on the work stream after both runs
		left    []uint64 // dead letters left after both runs
	}{
		{
			name:   "originals and their replays' dead letters",
			first:  []Status{re, re, not, sup, sup, sup},
			second: []Status{dup, dup, not, sup, sup, sup},
			by:     []uint64{0, 0, 0, 1, 2, 1},
			msgIDs: []string{"r1.replay1", "r2.replay2"},
			left:   []uint64{1, 2, 3, 4, 5, 6},
		},
		{
			name:    "newest first",
			f:       Filter{Kind: "sleep"},
			reverse: true,
			first:   []Status{re, not, sup, sup},
			second:  []Status{dup, not, sup, sup},
			by:      []uint64{0, 0, 1, 1},
			msgIDs:  []string{"r1.replay1"},
			left:    []uint64{1, 2, 3, 4, 5, 6},
		},
		{
			name:   "one id with three dead letters",
			f:      Filter{IDs: []string{"r1"}},
			first:  []Status{re, sup, sup},
			second: []Status{dup, sup, sup},
			by:     []uint64{0, 1, 1},
			msgIDs: []string{"r1.replay1"},
			left:   []uint64{1, 2, 3, 4, 5, 6},
		},
		{
			name:   "without the original",
			f:      Filter{IDs: []string{"r1"}},
			drop:   1,
			first:  []Status{re, sup},
			second: []Status{dup, sup},
			by:     []uint64{0, 4},
			msgIDs: []string{"r1.replay4"},
			left:   []uint64{2, 3, 4, 5, 6},
		},
		{
			name:   "undecodable data alone",
			f:      Filter{IDs: []string{"b1"}},
			first:  []Status{not},
			second: []Status{not},
			by:     []uint64{0},
			left:   []uint64{1, 2, 3, 4, 5, 6},
		},
		{
			name:   "delete takes the superseded along",
			delete: [2]bool{true, true},
			first:  []Status{re, re, not, sup, sup, sup},
			second: []Status{not}, // the replayed ones are gone
			by:     []uint64{0, 0, 0, 1, 2, 1},
			msgIDs: []string{"r1.replay1", "r2.replay2"},
			left:   []uint64{3},
		},
		{
			// The second run replays nothing: the latest failure of the
			// first run's replay (seq 6) stays on record.
			name:   "delete within the window keeps a duplicate",
			f:      Filter{IDs: []string{"r1"}},
			delete: [2]bool{false, true},
			first:  []Status{re, sup, sup},
			second: []Status{dup, sup, sup},
			by:     []uint64{0, 1, 1},
			msgIDs: []string{"r1.replay1"},
			left:   []uint64{1, 2, 3, 4, 5, 6},
		},
		{
			name:   "delete all within the window",
			delete: [2]bool{false, true},
			first:  []Status{re, re, not, sup, sup, sup},
			second: []Status{dup, dup, not, sup, sup, sup},
			by:     []uint64{0, 0, 0, 1, 2, 1},
			msgIDs: []string{"r1.replay1", "r2.replay2"},
			left:   []uint64{1, 2, 3, 4, 5, 6},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := testenv.Conn(t, testenv.NATS(t))
			replayFixture(t, conn)
			dropDead(t, conn, tt.drop)

			dry := replayMatches(t, conn, tt.f, tt.reverse, ReplayOptions{DryRun: true})
			checkStatuses(t, "dry run", dry, wouldReplay(tt.first))
			checkSupersededBy(t, dry, tt.by)
			checkWorkMsgIDs(t, conn, nil)

			first := replayMatches(t, conn, tt.f, tt.reverse, ReplayOptions{Delete: tt.delete[0]})
			checkStatuses(t, "first run", first, tt.first)
			checkSupersededBy(t, first, tt.by)
			second := replayMatches(t, conn, tt.f, tt.reverse, ReplayOptions{Delete: tt.delete[1]})
			checkStatuses(t, "second run", second, tt.second)
			checkWorkMsgIDs(t, conn, tt.msgIDs)
			checkDeleted(t, "first run", first, tt.left)
			checkDeleted(t, "second run", second, tt.left)

			left, err := List(context.Background(), conn.JS, Filter{})
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if diff := cmp.Diff(tt.left, seqs(left)); diff != "" {
				t.Errorf("dead letters left (-want +got):\n%s", diff)
			}
		})
	}
}

// checkDeleted checks that the outcomes report deleted exactly the
// entries that are not left in the end.
func checkDeleted(t *testing.T, what string, outs []Outcome, left []uint64) {
	t.Helper()
	for _, o := range outs {
		if want := !slices.Contains(left, o.Entry.Seq); o.Deleted != want {
			t.Errorf("%s: seq %d %s: deleted %v, want %v", what, o.Entry.Seq, o.Status,
				o.Deleted, want)
		}
	}
}

// dropDead deletes seq from the dead-letter stream, unless zero.
func dropDead(t *testing.T, conn *bus.Conn, seq uint64) {
	t.Helper()
	if seq == 0 {
		return
	}
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, seq); err != nil {
		t.Fatalf("delete dead seq %d: %v", seq, err)
	}
}

// replayMatches lists the entries that match f and replays them.
func replayMatches(t *testing.T, conn *bus.Conn, f Filter, reverse bool,
	opts ReplayOptions) []Outcome {
	t.Helper()
	ctx := context.Background()
	entries, err := List(ctx, conn.JS, f)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if reverse {
		slices.Reverse(entries)
	}
	outs, err := Replay(ctx, conn, entries, opts)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	return outs
}

// wouldReplay is statuses as a dry run reports them.
func wouldReplay(statuses []Status) []Status {
	out := slices.Clone(statuses)
	for i, s := range out {
		if s == StatusReplayed {
			out[i] = StatusWouldReplay
		}
	}
	return out
}

func checkSupersededBy(t *testing.T, outs []Outcome, want []uint64) {
	t.Helper()
	got := make([]uint64, len(outs))
	for i, o := range outs {
		got[i] = o.SupersededBy
		if o.Status == StatusSuperseded && o.MsgID == "" {
			t.Errorf("superseded seq %d has no msg id", o.Entry.Seq)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("superseded by (-want +got):\n%s", diff)
	}
}

// checkWorkMsgIDs reads the work stream: one message per wanted msg id.
func checkWorkMsgIDs(t *testing.T, conn *bus.Conn, want []string) {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get %s seq %d: %v", events.StreamWork, seq, err)
		}
		got = append(got, msg.Header.Get(jetstream.MsgIDHeader))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s msg ids (-want +got):\n%s", events.StreamWork, diff)
	}
}

func TestLimitRequests(t *testing.T) {
	req := func(id string) events.DeadLetter {
		return deadLetter(t, id, "sleep", &events.WorkRequest{ID: id, Kind: "sleep"})
	}
	// r1 at 1 and 4, r2 at 2 and 5, undecodable at 3, r3 at 6.
	entries := []Entry{
		{Seq: 1, DeadLetter: req("r1")},
		{Seq: 2, DeadLetter: req("r2")},
		{Seq: 3, DeadLetter: events.DeadLetter{ID: "b", Data: []byte("\xc1")}},
		{Seq: 4, DeadLetter: req("r1")},
		{Seq: 5, DeadLetter: req("r2")},
		{Seq: 6, DeadLetter: req("r3")},
	}
	tests := []struct {
		n       int
		want    []uint64
		wantCut bool
	}{
		{0, []uint64{1, 2, 3, 4, 5, 6}, false},
		{1, []uint64{1, 4}, true},
		{2, []uint64{1, 2, 4, 5}, true},
		{3, []uint64{1, 2, 3, 4, 5}, true},
		{4, []uint64{1, 2, 3, 4, 5, 6}, false},
		{10, []uint64{1, 2, 3, 4, 5, 6}, false},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.n), func(t *testing.T) {
			in := slices.Clone(entries)
			slices.Reverse(in) // order does not matter
			got, cut := LimitRequests(in, tt.n, time.Now())
			if diff := cmp.Diff(tt.want, seqs(got)); diff != "" || cut != tt.wantCut {
				t.Errorf("LimitRequests(%d) cut %v, want %v; seqs (-want +got):\n%s",
					tt.n, cut, tt.wantCut, diff)
			}
		})
	}
}
