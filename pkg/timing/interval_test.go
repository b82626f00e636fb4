package timing

import (
	"fmt"
	"strings"
	"testing"

	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// fakeRecorder is a recorder without a connection whose clock reads *now;
// enough for the record path and for taking intervals.
func fakeRecorder(every int64, maxPending int, now *int64) *Recorder {
	return &Recorder{
		every:      every,
		maxPending: maxPending,
		fakeClock:  func() int64 { return *now },
		open:       &interval{sums: make(map[key]*quantile.Summary)},
	}
}

// step is a sample at a time, or a take of the closed intervals.
type step struct {
	at   int64
	take string // "", "tick" or "cut"
}

// describe lists intervals as "[start,end)=n".
func describe(ivs []*interval) string {
	var b strings.Builder
	for _, iv := range ivs {
		fmt.Fprintf(&b, "[%d,%d)=%d ", iv.start, iv.end, iv.n)
	}
	return strings.TrimSpace(b.String())
}

func TestIntervalsFollowTheClock(t *testing.T) {
	tests := []struct {
		name       string
		maxPending int
		steps      []step
		want       string // what the last take returns
	}{
		{"one interval", 16, []step{{at: 100}, {at: 199}, {at: 200, take: "tick"}},
			"[100,200)=2"},
		{"open interval not taken by a tick", 16, []step{{at: 100}, {at: 150, take: "tick"}},
			""},
		{"sample at the boundary opens the next", 16,
			[]step{{at: 199}, {at: 200}, {at: 250, take: "tick"}}, "[100,200)=1"},
		{"idle intervals publish nothing", 16,
			[]step{{at: 120}, {at: 950}, {at: 1000, take: "tick"}}, "[100,200)=1 [900,1000)=1"},
		{"cut ends the interval after the last sample", 16,
			[]step{{at: 110}, {at: 130, take: "cut"}}, "[100,131)=1"},
		{"after a cut the rest of the interval", 16,
			[]step{{at: 110}, {at: 130, take: "cut"}, {at: 140}, {at: 200, take: "tick"}},
			"[131,200)=1"},
		{"cut of an empty interval", 16, []step{{at: 130, take: "cut"}}, ""},
		{"clock stepping back opens an interval", 16,
			[]step{{at: 250}, {at: 180}, {at: 190, take: "cut"}}, "[200,300)=1 [100,191)=1"},
		{"beyond max pending the oldest goes", 2,
			[]step{{at: 100}, {at: 200}, {at: 300}, {at: 400}, {at: 450, take: "tick"}},
			"[200,300)=1 [300,400)=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var now int64
			r := fakeRecorder(100, tt.maxPending, &now)
			var got []*interval
			for _, s := range tt.steps {
				now = s.at
				switch s.take {
				case "":
					r.Observe("op", events.TimingOK, 1)
				default:
					got = r.take(s.take == "cut")
				}
			}
			if d := describe(got); d != tt.want {
				t.Errorf("take() = %q, want %q", d, tt.want)
			}
		})
	}
}

func TestDroppedIntervalsAreCounted(t *testing.T) {
	var now int64
	r := fakeRecorder(100, 2, &now)
	for _, at := range []int64{100, 200, 300, 400, 500} {
		now = at
		r.Observe("op", events.TimingOK, 1)
	}
	if st := r.Stats(); st.Dropped != 2 || st.Recorded != 5 {
		t.Errorf("Stats() = %+v, want 2 dropped of 5 recorded", st)
	}
}

func TestRecycledMapForgetsIdlePairs(t *testing.T) {
	var now int64
	r := fakeRecorder(100, 16, &now)
	record := func(at int64, op string) {
		now = at
		r.Observe(op, events.TimingOK, 1)
	}
	take := func(at int64) *interval {
		now = at
		ivs := r.take(false)
		if len(ivs) != 1 {
			t.Fatalf("take() at %d = %s, want one interval", at, describe(ivs))
		}
		return ivs[0]
	}

	record(100, "a")
	record(100, "b")
	r.recycle(take(200)) // its map is the spare for the interval after next
	record(250, "a")
	r.recycle(take(300))

	// [300, 400) reuses the first map: a is used again, b stays idle.
	record(350, "a")
	third := take(400)
	if _, ok := third.sums[key{"b", events.TimingOK}]; !ok || len(third.sums) != 2 {
		t.Fatalf("third interval has %d pairs, want the first map's a and an empty b",
			len(third.sums))
	}
	ds, err := deltas(third)
	if err != nil || len(ds) != 1 || ds[0].Op != "a" {
		t.Errorf("deltas() = %+v, %v; want only a", ds, err)
	}
	r.recycle(third)
	if _, ok := third.sums[key{"b", events.TimingOK}]; ok {
		t.Error("recycle kept b, idle for a whole interval")
	}
}

func TestSplitKeepsPartsUnderLimit(t *testing.T) {
	d := func(op string, size int) events.TimingDelta {
		return events.TimingDelta{Op: op, Summary: make([]byte, size-len(op)-deltaOverhead)}
	}
	tests := []struct {
		name  string
		ds    []events.TimingDelta
		limit int
		want  string
	}{
		{"none", nil, 100, ""},
		{"all fit", []events.TimingDelta{d("a", 40), d("b", 40)}, 100, "ab"},
		{"exactly the limit", []events.TimingDelta{d("a", 50), d("b", 50)}, 100, "ab"},
		{"two parts", []events.TimingDelta{d("a", 60), d("b", 60), d("c", 40)}, 100, "a|bc"},
		{"oversized alone", []events.TimingDelta{d("a", 40), d("b", 500), d("c", 40)}, 100,
			"a|b|c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var parts []string
			for _, p := range split(tt.ds, tt.limit) {
				var ops string
				for _, d := range p {
					ops += d.Op
				}
				parts = append(parts, ops)
			}
			if got := strings.Join(parts, "|"); got != tt.want {
				t.Errorf("split() = %q, want %q", got, tt.want)
			}
		})
	}
}
