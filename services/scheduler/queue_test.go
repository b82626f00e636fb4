package scheduler

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// entry describes one item for a queue test: its priority, and when it was
// accepted and falls due as offsets from the test's epoch.
type entry struct {
	id       string
	priority int
	accepted time.Duration
	due      time.Duration // zero: due on acceptance
}

var epoch = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func (e entry) item() *item {
	req := events.WorkRequest{ID: e.id, Kind: "k", Priority: e.priority}
	req.Trace.Accepted = epoch.Add(e.accepted)
	req.Trace.Submitted = req.Trace.Accepted
	if e.due > 0 {
		req.NotBefore = epoch.Add(e.due)
	}
	return newItem(req)
}

// drain adds entries in order, each at its acceptance time, then pops
// everything at the offset at and returns the IDs in release order.
func drain(q *queue, entries []entry, at time.Duration) []string {
	for _, e := range entries {
		q.add(e.item(), epoch.Add(e.accepted))
	}
	var got []string
	for it := q.pop(epoch.Add(at)); it != nil; it = q.pop(epoch.Add(at)) {
		got = append(got, it.req.ID)
	}
	return got
}

func TestQueueOrder(t *testing.T) {
	const s = time.Second
	tests := []struct {
		name    string
		aging   time.Duration
		entries []entry
		at      time.Duration
		want    []string
	}{
		{
			name:  "higher priority first",
			aging: -1,
			entries: []entry{
				{id: "p0", priority: 0}, {id: "p5", priority: 5},
				{id: "p9", priority: 9}, {id: "p3", priority: 3},
			},
			want: []string{"p9", "p5", "p3", "p0"},
		},
		{
			name:  "fifo within a priority",
			aging: -1,
			entries: []entry{
				{id: "a", priority: 4, accepted: 1 * s}, {id: "b", priority: 4, accepted: 2 * s},
				{id: "c", priority: 4, accepted: 3 * s}, {id: "x", priority: 1, accepted: 4 * s},
			},
			at:   5 * s,
			want: []string{"a", "b", "c", "x"},
		},
		{
			name:  "fifo within a priority at the same instant",
			aging: 10 * s,
			entries: []entry{
				{id: "first", priority: 2}, {id: "second", priority: 2},
				{id: "third", priority: 2},
			},
			want: []string{"first", "second", "third"},
		},
		{
			name:  "no aging: an old low item still waits",
			aging: -1,
			entries: []entry{
				{id: "old-p0", priority: 0}, {id: "new-p9", priority: 9, accepted: 100 * s},
			},
			at:   100 * s,
			want: []string{"new-p9", "old-p0"},
		},
		{
			name:  "aging lifts a long-waiting low priority above a new high one",
			aging: 1 * s,
			entries: []entry{
				{id: "old-p0", priority: 0}, {id: "new-p9", priority: 9, accepted: 10 * s},
			},
			at: 10 * s,
			// old-p0 has waited 10 intervals: 0+10 > 9.
			want: []string{"old-p0", "new-p9"},
		},
		{
			name:  "aging not yet enough",
			aging: 1 * s,
			entries: []entry{
				{id: "old-p0", priority: 0}, {id: "new-p9", priority: 9, accepted: 8 * s},
			},
			at:   8*s + 500*time.Millisecond,
			want: []string{"new-p9", "old-p0"},
		},
		{
			name:  "equal effective priority: longer wait first",
			aging: 1 * s,
			entries: []entry{
				{id: "old-p0", priority: 0}, {id: "new-p9", priority: 9, accepted: 9 * s},
			},
			at:   9 * s,
			want: []string{"old-p0", "new-p9"},
		},
		{
			name:  "aging counts from due, not from acceptance",
			aging: 1 * s,
			entries: []entry{
				{id: "delayed-p0", priority: 0, due: 20 * s},
				{id: "p5", priority: 5, accepted: 15 * s},
			},
			// delayed-p0 has been due 2 s: 0+2 < 5.
			at:   22 * s,
			want: []string{"p5", "delayed-p0"},
		},
		{
			name:  "items not yet due stay",
			aging: -1,
			entries: []entry{
				{id: "later", priority: 9, due: 10 * s}, {id: "now", priority: 0},
				{id: "soon", priority: 1, due: 2 * s},
			},
			at:   5 * s,
			want: []string{"soon", "now"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := drain(newQueue(tt.aging), tt.entries, tt.at)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("release order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestQueueTimers(t *testing.T) {
	const s = time.Second
	q := newQueue(-1)
	for _, e := range []entry{
		{id: "c", due: 3 * s}, {id: "a", due: 1 * s}, {id: "b", due: 2 * s},
		{id: "b2", due: 2 * s},
	} {
		q.add(e.item(), epoch)
	}

	steps := []struct {
		at      time.Duration
		want    []string
		nextDue time.Duration // zero: none left
	}{
		{at: 0, want: nil, nextDue: 1 * s},
		{at: 1*s - time.Nanosecond, want: nil, nextDue: 1 * s},
		{at: 1 * s, want: []string{"a"}, nextDue: 2 * s},
		{at: 2500 * time.Millisecond, want: []string{"b", "b2"}, nextDue: 3 * s},
		{at: 4 * s, want: []string{"c"}},
	}
	for _, st := range steps {
		var got []string
		for it := q.pop(epoch.Add(st.at)); it != nil; it = q.pop(epoch.Add(st.at)) {
			got = append(got, it.req.ID)
		}
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("at %s: released (-want +got):\n%s", st.at, diff)
		}
		next, ok := q.nextDue()
		if want := st.nextDue > 0; ok != want || ok && !next.Equal(epoch.Add(st.nextDue)) {
			t.Errorf("at %s: nextDue = %v, %v; want %s", st.at, next, ok, st.nextDue)
		}
	}
	if q.Len() != 0 {
		t.Errorf("Len = %d after draining, want 0", q.Len())
	}
}

func TestQueueRequeueKeepsPlace(t *testing.T) {
	q := newQueue(-1)
	for _, e := range []entry{
		{id: "a", priority: 3}, {id: "b", priority: 3, accepted: time.Second},
	} {
		q.add(e.item(), epoch.Add(e.accepted))
	}
	now := epoch.Add(2 * time.Second)

	first := q.pop(now)
	q.requeue(first)
	if got := q.pop(now).req.ID; got != "a" {
		t.Errorf("after requeue popped %q, want %q", got, "a")
	}
	if got, want := q.readyLen(), 1; got != want {
		t.Errorf("readyLen = %d, want %d", got, want)
	}
}

func TestQueuePopFrom(t *testing.T) {
	const s = time.Second
	entries := []entry{
		{id: "old-p0", priority: 0}, {id: "p6", priority: 6, accepted: 1 * s},
		{id: "p7", priority: 7, accepted: 2 * s}, {id: "p9", priority: 9, accepted: 3 * s},
	}
	tests := []struct {
		name     string
		aging    time.Duration
		minClass int
		want     string
	}{
		{name: "all classes", aging: -1, minClass: 0, want: "p9"},
		{name: "aging lifts old-p0 over all", aging: 100 * time.Millisecond, minClass: 0,
			want: "old-p0"},
		// old-p0 is at 100 by aging but the reserve goes by own priority.
		{name: "reserve ignores aging", aging: 100 * time.Millisecond, minClass: 7,
			want: "p7"},
		{name: "none from 10", aging: -1, minClass: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(tt.aging)
			for _, e := range entries {
				q.add(e.item(), epoch.Add(e.accepted))
			}
			var got string
			if it := q.popFrom(epoch.Add(10*s), tt.minClass); it != nil {
				got = it.req.ID
			}
			if got != tt.want {
				t.Errorf("popFrom(%d) = %q, want %q", tt.minClass, got, tt.want)
			}
		})
	}
}

func TestPendingKey(t *testing.T) {
	tests := []struct {
		id, want string
	}{
		{id: "w-42", want: "id.w-42"},
		{id: "Order_7=x", want: "id.Order_7=x"},
		{id: "a.b", want: "hex.612e62"},
		{id: "a b", want: "hex.612062"},
		{id: "a_b", want: "id.a_b"},
		{id: "ü", want: "hex.c3bc"},
	}
	for _, tt := range tests {
		if got := pendingKey(tt.id); got != tt.want {
			t.Errorf("pendingKey(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "zero is valid", cfg: Config{}},
		{name: "no limits", cfg: Config{MaxInFlight: -1, AgingInterval: -1}},
		{name: "durable with a dot", cfg: Config{Durable: "a.b"}, wantErr: true},
		{name: "bucket with a space", cfg: Config{PendingBucket: "a b"}, wantErr: true},
		{name: "negative ack pending", cfg: Config{MaxAckPending: -1}, wantErr: true},
		{name: "negative timeout", cfg: Config{InFlightTimeout: -time.Second}, wantErr: true},
		{name: "reserve under the limit",
			cfg: Config{MaxInFlight: 4, ReservedInFlight: 3, ReservedPriority: 9}},
		{name: "reserve of the default limit", cfg: Config{ReservedInFlight: 16}},
		{name: "negative reserve", cfg: Config{ReservedInFlight: -1}, wantErr: true},
		{name: "reserve equals the limit", cfg: Config{MaxInFlight: 4, ReservedInFlight: 4},
			wantErr: true},
		{name: "reserve without a limit", cfg: Config{MaxInFlight: -1, ReservedInFlight: 1},
			wantErr: true},
		{name: "reserved priority 10", cfg: Config{ReservedPriority: 10}, wantErr: true},
		{name: "negative reserved priority", cfg: Config{ReservedPriority: -1},
			wantErr: true},
		{name: "recurring bucket with a dot", cfg: Config{RecurringBucket: "a.b"},
			wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("Validate() = %v, want error: %v", err, tt.wantErr)
			}
		})
	}

	got := Config{}.withDefaults()
	want := Config{
		Durable: "scheduler", PendingBucket: "perfpipe_scheduler_pending",
		RecurringBucket: "perfpipe_recurring", MaxAckPending: 4096, MaxInFlight: 256,
		InFlightTimeout: 2 * time.Minute, AgingInterval: 10 * time.Second,
		ReservedPriority: 7,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}
