package events_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestRoundTripMsgpack(t *testing.T) {
	in := &events.WorkRequest{
		ID: "r1", Kind: "http", Priority: 7, Delay: events.Duration(2 * time.Second),
		Payload: events.Payload(`{"url":"http://127.0.0.1/x"}`),
		Cache:   events.CachePolicy{TTL: events.Duration(time.Minute)},
		Trace:   events.Trace{Submitted: time.Unix(1700000000, 5).UTC()},
	}
	b, err := events.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var out events.WorkRequest
	if err := events.Unmarshal(b, &out); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if diff := cmp.Diff(in, &out); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if out.Type != events.TypeWorkRequest || out.V != events.SchemaVersion {
		t.Errorf("meta = %q v%d, want %q v%d", out.Type, out.V, events.TypeWorkRequest, events.SchemaVersion)
	}
}

func TestUnmarshalWorkRequestJSON(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want events.WorkRequest
	}{
		{
			name: "shell payload",
			in:   `{"payload":{"ms":5}}`,
			want: events.WorkRequest{Payload: events.Payload(`{"ms":5}`)},
		},
		{
			name: "delay string and priority",
			in:   ` {"id":"a","kind":"sleep","priority":9,"delay":"2s"}`,
			want: events.WorkRequest{ID: "a", Kind: "sleep", Priority: 9,
				Delay: events.Duration(2 * time.Second)},
		},
		{
			name: "delay nanoseconds",
			in:   `{"delay":1500}`,
			want: events.WorkRequest{Delay: 1500},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got events.WorkRequest
			if err := events.Unmarshal([]byte(tt.in), &got); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			tt.want.Meta = events.Meta{Type: events.TypeWorkRequest, V: events.SchemaVersion}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	timing, _ := events.Marshal(&events.Timing{Service: "a", Op: "b"})
	newer, _ := msgpack.Marshal(map[string]any{"type": "work.request", "v": 99, "kind": "x"})
	untyped, _ := msgpack.Marshal(map[string]any{"kind": "x"})

	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, events.ErrDecode},
		{"garbage", []byte("\xc1\xc1not msgpack"), events.ErrDecode},
		{"broken json", []byte(`{"payload":`), events.ErrDecode},
		{"unknown json field", []byte(`{"kidn":"http"}`), events.ErrDecode},
		{"bad delay", []byte(`{"delay":"soon"}`), events.ErrDecode},
		{"other type", timing, events.ErrWrongType},
		{"msgpack without type", untyped, events.ErrWrongType},
		{"newer schema", newer, events.ErrSchema},
		{"json with other type", []byte(`{"type":"perf.timing"}`), events.ErrWrongType},
		{"json array", []byte(`[1,2]`), events.ErrDecode},
		{"json null", []byte(`null`), events.ErrDecode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got events.WorkRequest
			err := events.Unmarshal(tt.in, &got)
			if !errors.Is(err, tt.want) {
				t.Errorf("Unmarshal(%q) error = %v, want %v", tt.in, err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		req  events.WorkRequest
		ok   bool
	}{
		{"fine", events.WorkRequest{Kind: "http", Priority: 9}, true},
		{"no kind", events.WorkRequest{}, false},
		{"dotted kind", events.WorkRequest{Kind: "a.b"}, false},
		{"priority high", events.WorkRequest{Kind: "x", Priority: 10}, false},
		{"priority negative", events.WorkRequest{Kind: "x", Priority: -1}, false},
		{"negative delay", events.WorkRequest{Kind: "x", Delay: -1}, false},
		{"reply inbox", events.WorkRequest{Kind: "x", ReplyTo: "_INBOX.abc"}, true},
		{"reply with space", events.WorkRequest{Kind: "x", ReplyTo: "bad subject"}, false},
		{"reply wildcard", events.WorkRequest{Kind: "x", ReplyTo: "a.*"}, false},
		{"reply loop", events.WorkRequest{Kind: "x", ReplyTo: "work.submit.x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, events.ErrInvalid) {
				t.Errorf("Validate() = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDue(t *testing.T) {
	sub := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		req  events.WorkRequest
		want time.Time
	}{
		{"immediate", events.WorkRequest{Trace: events.Trace{Submitted: sub}}, time.Time{}},
		{"delay", events.WorkRequest{Delay: events.Duration(2 * time.Second),
			Trace: events.Trace{Submitted: sub}}, sub.Add(2 * time.Second)},
		{"not before wins", events.WorkRequest{Delay: events.Duration(time.Second),
			NotBefore: sub.Add(time.Minute), Trace: events.Trace{Submitted: sub}}, sub.Add(time.Minute)},
		{"delay wins", events.WorkRequest{Delay: events.Duration(time.Hour),
			NotBefore: sub.Add(time.Minute), Trace: events.Trace{Submitted: sub}}, sub.Add(time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.req.Due(); !got.Equal(tt.want) {
				t.Errorf("Due() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPeekID(t *testing.T) {
	packed, _ := msgpack.Marshal(map[string]any{"id": "m1", "priority": "high"})
	tests := []struct {
		in   []byte
		want string
	}{
		{[]byte(`{"id":"j1","colour":"red"}`), "j1"},
		{[]byte(`{"id":"j2","delay":"soon"}`), "j2"},
		{packed, "m1"},
		{[]byte(`{"colour":"red"}`), ""},
		{[]byte("junk"), ""},
	}
	for _, tt := range tests {
		if got := events.PeekID(tt.in); got != tt.want {
			t.Errorf("PeekID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCanonicalPayload(t *testing.T) {
	a, err := events.Payload(`{"b": 1, "a": [1, 2.50]}`).Canonical()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := events.Payload(`{"a":[1,2.50],"b":1}`).Canonical()
	if string(a) != string(b) {
		t.Errorf("canonical forms differ: %s vs %s", a, b)
	}
	if _, err := events.Payload(`{`).Canonical(); err == nil {
		t.Error("Canonical of broken json: got nil error")
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct{ got, want string }{
		{events.SubmitSubject("http"), "work.submit.http"},
		{events.TimingSubject("agent", "http.cache"), "perf.timing.agent.http_cache"},
		{events.SnapshotSubject("a b", "*"), "perf.snapshot.a_b._"},
		{events.FinalSubject("agent", "http"), "perf.snapshot.agent.http.final"},
		{events.ResourceSubject("", "up"), "perf.resource._.up"},
		{events.LastToken("work.submit.csv"), "csv"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// TestSnapshotWire checks that a snapshot's figures travel flat, as
// before they were a struct of their own, and that absent latencies stay
// absent rather than zero.
func TestSnapshotWire(t *testing.T) {
	p95 := 4.5
	in := &events.Snapshot{Service: "agent", Op: "http", Partial: true,
		Figures: events.Figures{Count: 3, P95Ms: &p95},
		Rollups: []events.Figures{{Count: 0}}}
	b, err := events.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var flat map[string]any
	if err := msgpack.Unmarshal(b, &flat); err != nil {
		t.Fatalf("decode as a map: %v", err)
	}
	if fmt.Sprint(flat["count"]) != "3" || flat["p95_ms"] != 4.5 || flat["partial"] != true {
		t.Errorf("count %v p95_ms %v partial %v, want 3, 4.5, true at the top level",
			flat["count"], flat["p95_ms"], flat["partial"])
	}
	if _, ok := flat["p50_ms"]; ok {
		t.Errorf("p50_ms present, want absent when not set")
	}

	var out events.Snapshot
	if err := events.Unmarshal(b, &out); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if diff := cmp.Diff(in, &out); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	j, err := events.MarshalJSON(in)
	if err != nil {
		t.Fatalf("MarshalJSON: %v", err)
	}
	var fromJSON events.Snapshot
	if err := events.Unmarshal(j, &fromJSON); err != nil || fromJSON.P95Ms == nil ||
		*fromJSON.P95Ms != 4.5 || fromJSON.P50Ms != nil {
		t.Errorf("json %s read back as %+v, %v", j, fromJSON.Figures, err)
	}
}
