package scheduler

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// maxLate is how late a due item may be released in these tests: the
// service aims at a few milliseconds; the margin is for a busy machine.
const maxLate = 150 * time.Millisecond

func TestReleaseJSONAndMsgpack(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{}).svc

	submitJSON(t, client, `{"id":"json-1","priority":2,"payload":{"n":1}}`)
	seq := submit(t, client, &events.WorkRequest{
		Kind: testKind, Priority: 7, Payload: events.Payload(`{"n":2}`),
	})

	msgs := ready.wait(t, 2)
	got := requests(t, msgs)
	tests := []struct {
		id, payload string
		priority    int
	}{
		{id: "json-1", payload: `{"n":1}`, priority: 2},
		{id: fmt.Sprintf("w-%d", seq), payload: `{"n":2}`, priority: 7},
	}
	for i, want := range tests {
		req, msg := got[i], msgs[i]
		if req.ID != want.id {
			t.Errorf("release %d: id = %q, want %q", i, req.ID, want.id)
		}
		if msg.subject != events.ReadySubject(testKind) {
			t.Errorf("release %d: subject = %q, want %q", i, msg.subject,
				events.ReadySubject(testKind))
		}
		if h := msg.header.Get(jetstream.MsgIDHeader); h != want.id {
			t.Errorf("release %d: Nats-Msg-Id = %q, want %q", i, h, want.id)
		}
		if req.Kind != testKind || req.Priority != want.priority ||
			string(req.Payload) != want.payload {
			t.Errorf("release %d: kind %q priority %d payload %s, want %q %d %s", i,
				req.Kind, req.Priority, req.Payload, testKind, want.priority, want.payload)
		}
		tr := req.Trace
		if tr.Submitted.IsZero() || tr.Accepted.Before(tr.Submitted) ||
			tr.Released.Before(tr.Accepted) {
			t.Errorf("release %d: trace %+v, want submitted <= accepted <= released", i, tr)
		}
	}

	st := svc.Stats()
	if st.Accepted != 2 || st.Released != 2 || st.Pending != 0 || st.Dead != 0 {
		t.Errorf("stats = %+v, want 2 accepted, 2 released, none pending or dead", st)
	}
}

func TestDelayNeverEarly(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{}).svc

	notBefore := time.Now().Add(500 * time.Millisecond).Format(time.RFC3339Nano)
	submitJSON(t, client, `{"id":"delay-400ms","delay":"400ms"}`)
	submitJSON(t, client, `{"id":"not-before-500ms","not_before":"`+notBefore+`"}`)
	submit(t, client, &events.WorkRequest{ID: "delay-300ms", Kind: testKind,
		Delay: events.Duration(300 * time.Millisecond)})
	waitStats(t, svc, "3 items held", func(s Stats) bool { return s.Pending == 3 })
	if n := len(ready.all()); n != 0 {
		t.Fatalf("%d items released before any was due", n)
	}

	msgs := ready.wait(t, 3)
	got := requests(t, msgs)
	if diff := cmp.Diff([]string{"delay-300ms", "delay-400ms", "not-before-500ms"},
		ids(got)); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
	for i, req := range got {
		due := req.Due()
		late := req.Trace.Released.Sub(due)
		t.Logf("%s released %s after due, seen %s after due", req.ID, late,
			msgs[i].at.Sub(due))
		if late < 0 || msgs[i].at.Before(due) {
			t.Errorf("%s released %s before due", req.ID, -late)
		}
		if late > maxLate {
			t.Errorf("%s released %s after due, want at most %s", req.ID, late, maxLate)
		}
	}
	waitStats(t, svc, "nothing held", func(s Stats) bool { return s.Pending == 0 })
	if keys := bucketKeys(t, client); len(keys) != 0 {
		t.Errorf("bucket keys after release = %v, want none", keys)
	}
}

func TestPriorityUnderBacklog(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{MaxInFlight: 1}).svc

	for _, id := range []string{"p0-1", "p0-2", "p0-3"} {
		submit(t, client, &events.WorkRequest{ID: id, Kind: testKind, Priority: 0})
	}
	for _, id := range []string{"p9-1", "p9-2", "p9-3"} {
		submit(t, client, &events.WorkRequest{ID: id, Kind: testKind, Priority: 9})
	}
	// p0-1 took the only credit; the rest wait for results.
	waitStats(t, svc, "5 items due and waiting for credit", func(s Stats) bool {
		return s.Due == 5 && s.InFlight == 1
	})

	want := []string{"p0-1", "p9-1", "p9-2", "p9-3", "p0-2", "p0-3"}
	for n := 1; n <= len(want); n++ {
		got := ids(requests(t, ready.wait(t, n)))
		if len(ready.all()) > n {
			t.Fatalf("%d released with %d results: credit not respected", len(ready.all()), n-1)
		}
		finish(t, client, got[n-1])
	}
	if diff := cmp.Diff(want, ids(requests(t, ready.all()))); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
}

func TestAgingUnderBacklog(t *testing.T) {
	tests := []struct {
		name  string
		aging time.Duration
		want  []string
	}{
		// old-p0 waits 600 ms = 12 intervals: 0+12 beats 9.
		{name: "aging lifts the old item", aging: 50 * time.Millisecond,
			want: []string{"first", "old-p0", "new-p9"}},
		{name: "without aging priority wins", aging: -1,
			want: []string{"first", "new-p9", "old-p0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := testenv.NATS(t)
			client := testenv.Conn(t, url)
			ready := follow(t, client, events.StreamReady, events.ReadyAll)
			svc := start(t, url, Config{MaxInFlight: 1, AgingInterval: tt.aging}).svc

			submit(t, client, &events.WorkRequest{ID: "first", Kind: testKind})
			submit(t, client, &events.WorkRequest{ID: "old-p0", Kind: testKind})
			waitStats(t, svc, "old-p0 waiting", func(s Stats) bool { return s.Due == 1 })
			// The wait is the behaviour under test, not synchronisation.
			time.Sleep(600 * time.Millisecond)
			submit(t, client, &events.WorkRequest{ID: "new-p9", Kind: testKind, Priority: 9})
			waitStats(t, svc, "both waiting", func(s Stats) bool { return s.Due == 2 })

			for n := 1; n <= len(tt.want); n++ {
				got := ids(requests(t, ready.wait(t, n)))
				finish(t, client, got[n-1])
			}
			if diff := cmp.Diff(tt.want, ids(requests(t, ready.all()))); diff != "" {
				t.Errorf("release order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInFlightTimeoutReturnsCredit(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	timeout := 300 * time.Millisecond
	svc := start(t, url, Config{MaxInFlight: 1, InFlightTimeout: timeout}).svc

	submit(t, client, &events.WorkRequest{ID: "lost", Kind: testKind})
	submit(t, client, &events.WorkRequest{ID: "next", Kind: testKind})

	got := requests(t, ready.wait(t, 2))
	gap := got[1].Trace.Released.Sub(got[0].Trace.Released)
	if gap < timeout || gap > timeout+maxLate {
		t.Errorf("second release %s after the first, want %s to %s", gap, timeout,
			timeout+maxLate)
	}
	if st := svc.Stats(); st.Expired != 1 {
		t.Errorf("expired = %d, want 1", st.Expired)
	}
}

func TestRestartKeepsPending(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	first := start(t, url, Config{})

	delayed := []struct {
		id       string
		priority int
		delay    time.Duration
	}{
		{id: "d-1500ms", priority: 9, delay: 1500 * time.Millisecond},
		{id: "d-1200ms", priority: 0, delay: 1200 * time.Millisecond},
		{id: "d-1800ms", priority: 5, delay: 1800 * time.Millisecond},
	}
	submit(t, client, &events.WorkRequest{ID: "now", Kind: testKind})
	for _, d := range delayed {
		submit(t, client, &events.WorkRequest{ID: d.id, Kind: testKind,
			Priority: d.priority, Delay: events.Duration(d.delay)})
	}
	waitStats(t, first.svc, "3 items held", func(s Stats) bool { return s.Pending == 3 })
	ready.wait(t, 1)

	first.kill(t)
	if n := len(ready.all()); n != 1 {
		t.Fatalf("%d released before the restart, want 1", n)
	}
	if keys := bucketKeys(t, client); len(keys) != len(delayed) {
		t.Fatalf("bucket keys after kill = %v, want %d", keys, len(delayed))
	}

	second := start(t, url, Config{})
	got := requests(t, ready.wait(t, 1+len(delayed)))
	if diff := cmp.Diff([]string{"now", "d-1200ms", "d-1500ms", "d-1800ms"},
		ids(got)); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
	for _, req := range got[1:] {
		late := req.Trace.Released.Sub(req.Due())
		if late < 0 || late > maxLate {
			t.Errorf("%s released %s after due, want 0 to %s", req.ID, late, maxLate)
		}
	}
	waitStats(t, second.svc, "nothing held", func(s Stats) bool { return s.Pending == 0 })
	if keys := bucketKeys(t, client); len(keys) != 0 {
		t.Errorf("bucket keys after release = %v, want none", keys)
	}
}

func TestDeadLetters(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	dead := follow(t, client, events.StreamDead, events.DeadAll)
	results := follow(t, client, events.StreamResults, events.ResultAll)
	run := start(t, url, Config{})

	wrongType, err := events.Marshal(&events.Result{ID: "r-1", Kind: testKind})
	if err != nil {
		t.Fatal(err)
	}
	inputs := []struct {
		name       string
		data       []byte
		wantReason string
		wantID     string // the ID of a decodable request: a dead result is due
	}{
		{name: "garbage", data: []byte("\xc1\xff not an event"), wantReason: "undecodable"},
		{name: "bad json", data: []byte(`{"id":"x","bogus":1}`), wantReason: "undecodable",
			wantID: "x"},
		{name: "wrong type", data: wrongType, wantReason: "wrong type"},
		{name: "newer schema", data: []byte(`{"v":99,"id":"s-1"}`),
			wantReason: "unsupported schema", wantID: "s-1"},
		{name: "kind mismatch", data: []byte(`{"id":"km-1","kind":"other"}`),
			wantReason: "kind mismatch", wantID: "km-1"},
		{name: "priority 12", data: []byte(`{"id":"prio-12","priority":12}`),
			wantReason: "invalid request", wantID: "prio-12"},
	}
	for _, in := range inputs {
		publishRaw(t, client, events.SubmitSubject(testKind), in.data)
	}
	submitJSON(t, client, `{"id":"after"}`)

	if got := ids(requests(t, ready.wait(t, 1))); got[0] != "after" {
		t.Errorf("released %v, want [after]: the service must keep working", got)
	}
	msgs := dead.wait(t, len(inputs))
	var wantResults []string
	for i, in := range inputs {
		var dl events.DeadLetter
		if err := events.Unmarshal(msgs[i].data, &dl); err != nil {
			t.Fatalf("%s: dead letter: %v", in.name, err)
		}
		if dl.Reason != in.wantReason || dl.Service != Name || dl.Kind != testKind ||
			dl.Subject != events.SubmitSubject(testKind) || dl.Error == "" {
			t.Errorf("%s: dead letter reason %q service %q kind %q subject %q error %q; "+
				"want %q %q %q %q and an error", in.name, dl.Reason, dl.Service, dl.Kind,
				dl.Subject, dl.Error, in.wantReason, Name, testKind,
				events.SubmitSubject(testKind))
		}
		if !bytes.Equal(dl.Data, in.data) {
			t.Errorf("%s: dead letter data = %q, want the original %q", in.name, dl.Data, in.data)
		}
		if in.wantID != "" {
			wantResults = append(wantResults, in.wantID)
		}
	}

	res := results.wait(t, len(wantResults))
	for i, id := range wantResults {
		var r events.Result
		if err := events.Unmarshal(res[i].data, &r); err != nil {
			t.Fatalf("result %d: %v", i, err)
		}
		if r.ID != id || r.Status != events.StatusDead || r.Error == "" {
			t.Errorf("result %d: id %q status %q error %q, want %q %q and an error",
				i, r.ID, r.Status, r.Error, id, events.StatusDead)
		}
	}
	if st := run.svc.Stats(); st.Dead != int64(len(inputs)) || st.Released != 1 {
		t.Errorf("stats = %+v, want %d dead, 1 released", st, len(inputs))
	}
}

func TestReservedCapacity(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{MaxInFlight: 4, ReservedInFlight: 1}).svc
	p0 := func(n int) *events.WorkRequest {
		return &events.WorkRequest{ID: fmt.Sprintf("p0-%d", n), Kind: testKind}
	}

	// No result comes back: p0 items take the 3 unreserved credits.
	for n := 1; n <= 5; n++ {
		submit(t, client, p0(n))
	}
	ready.wait(t, 3)
	waitStats(t, svc, "2 p0 items waiting", func(s Stats) bool {
		return s.Due == 2 && s.InFlight == 3
	})

	submit(t, client, &events.WorkRequest{ID: "p9", Kind: testKind, Priority: 9})
	got := ids(requests(t, ready.wait(t, 4)))
	if got[3] != "p9" {
		t.Fatalf("released %v, want p9 fourth on the reserved credit", got)
	}
	submit(t, client, p0(6))
	waitStats(t, svc, "3 p0 items waiting", func(s Stats) bool {
		return s.Due == 3 && s.InFlight == 4
	})
	if n := len(ready.all()); n != 4 {
		t.Fatalf("%d released with every credit taken, want 4", n)
	}

	// A p0 result frees unreserved credit: the oldest waiting p0 goes.
	finish(t, client, "p0-1")
	want := []string{"p0-1", "p0-2", "p0-3", "p9", "p0-4"}
	if diff := cmp.Diff(want, ids(requests(t, ready.wait(t, 5)))); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
}
