package batcher

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// add is one item fed to the accumulator in a table case.
type add struct {
	kind string
	size int
}

// closedSeqs is what a case expects: the sequences of each closed batch.
type closedSeqs [][]uint64

func TestAccumulatorLimits(t *testing.T) {
	tests := []struct {
		name   string
		policy Static
		adds   []add
		// wantAdd are the batches closed by Add, in order; wantDrain what
		// Drain returns at the end.
		wantAdd, wantDrain closedSeqs
	}{
		{
			name:      "count",
			policy:    Static{Default: Limits{MaxCount: 3}},
			adds:      repeat("a", 10, 7),
			wantAdd:   closedSeqs{{1, 2, 3}, {4, 5, 6}},
			wantDrain: closedSeqs{{7}},
		},
		{
			name:      "bytes, next item would not fit",
			policy:    Static{Default: Limits{MaxBytes: 100}},
			adds:      []add{{"a", 40}, {"a", 40}, {"a", 40}, {"a", 30}, {"a", 60}},
			wantAdd:   closedSeqs{{1, 2}, {3, 4}},
			wantDrain: closedSeqs{{5}},
		},
		{
			name:      "bytes, filled exactly",
			policy:    Static{Default: Limits{MaxBytes: 100}},
			adds:      []add{{"a", 50}, {"a", 50}, {"a", 1}},
			wantAdd:   closedSeqs{{1, 2}},
			wantDrain: closedSeqs{{3}},
		},
		{
			name:      "oversize item goes alone",
			policy:    Static{Default: Limits{MaxBytes: 100}},
			adds:      []add{{"a", 10}, {"a", 500}, {"a", 10}},
			wantAdd:   closedSeqs{{1}, {2}},
			wantDrain: closedSeqs{{3}},
		},
		{
			name:      "oversize item into empty batch",
			policy:    Static{Default: Limits{MaxBytes: 100}},
			adds:      []add{{"a", 500}},
			wantAdd:   closedSeqs{{1}},
			wantDrain: closedSeqs{},
		},
		{
			name: "per-kind override, other fields inherited",
			policy: Static{
				Default: Limits{MaxCount: 2, MaxBytes: 100},
				PerKind: map[string]Limits{"b": {MaxCount: 3}},
			},
			adds: []add{
				{"a", 10}, {"b", 10}, {"a", 10}, {"b", 10}, {"b", 10},
				{"a", 10}, {"b", 60}, {"b", 60},
			},
			wantAdd:   closedSeqs{{1, 3}, {2, 4, 5}, {7}},
			wantDrain: closedSeqs{{6}, {8}},
		},
		{
			name:      "kinds never share a batch",
			policy:    Static{Default: Limits{MaxCount: 2}},
			adds:      []add{{"a", 1}, {"b", 1}, {"c", 1}, {"a", 1}},
			wantAdd:   closedSeqs{{1, 4}},
			wantDrain: closedSeqs{{2}, {3}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acc := NewAccumulator(tt.policy)
			now := time.Now()
			got := closedSeqs{}
			for i, a := range tt.adds {
				closed, err := acc.Add(item(a.kind, uint64(i+1), a.size), now)
				if err != nil {
					t.Fatalf("Add(%d): %v", i+1, err)
				}
				got = append(got, seqs(t, closed)...)
			}
			if diff := cmp.Diff(tt.wantAdd, got); diff != "" {
				t.Errorf("closed by Add (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantDrain, seqs(t, acc.Drain())); diff != "" {
				t.Errorf("Drain (-want +got):\n%s", diff)
			}
			if n := acc.Open(); n != 0 {
				t.Errorf("Open() after Drain = %d, want 0", n)
			}
		})
	}
}

func TestAccumulatorLinger(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	acc := NewAccumulator(Static{
		Default: Limits{Linger: 10 * time.Millisecond},
		PerKind: map[string]Limits{"slow": {Linger: 20 * time.Millisecond}},
	})
	mustAdd(t, acc, item("fast", 1, 1), ms(0))
	mustAdd(t, acc, item("slow", 2, 1), ms(5))
	mustAdd(t, acc, item("fast", 3, 1), ms(8))

	// Each step runs in order against the same accumulator.
	steps := []struct {
		name     string
		at       time.Time
		want     closedSeqs
		wantNext time.Time // zero: no open batch
	}{
		{"before first deadline", ms(9), closedSeqs{}, ms(10)},
		{"first item's linger, not the last's", ms(10), closedSeqs{{1, 3}}, ms(25)},
		{"per-kind linger not yet", ms(24), closedSeqs{}, ms(25)},
		{"per-kind linger", ms(25), closedSeqs{{2}}, time.Time{}},
		{"nothing open", ms(100), closedSeqs{}, time.Time{}},
	}
	for _, st := range steps {
		got := seqs(t, acc.Expire(st.at))
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("%s: Expire (-want +got):\n%s", st.name, diff)
		}
		next, ok := acc.Next()
		if !next.Equal(st.wantNext) || ok == st.wantNext.IsZero() {
			t.Errorf("%s: Next() = %v, %t; want %v", st.name, next, ok, st.wantNext)
		}
	}
}

func TestAccumulatorExpireOrder(t *testing.T) {
	t0 := time.Now()
	acc := NewAccumulator(Static{})
	mustAdd(t, acc, item("b", 1, 1), t0.Add(time.Millisecond))
	mustAdd(t, acc, item("a", 2, 1), t0)
	mustAdd(t, acc, item("c", 3, 1), t0.Add(2*time.Millisecond))

	got := seqs(t, acc.Expire(t0.Add(time.Hour)))
	if diff := cmp.Diff(closedSeqs{{2}, {1}, {3}}, got); diff != "" {
		t.Errorf("Expire order, earliest deadline first (-want +got):\n%s", diff)
	}
}

func TestAccumulatorNoKind(t *testing.T) {
	acc := NewAccumulator(Static{})
	_, err := acc.Add(Item{Req: &events.WorkRequest{ID: "x"}, Seq: 1}, time.Now())
	if err != ErrNoKind {
		t.Errorf("Add without kind: err = %v, want ErrNoKind", err)
	}
}

func TestPolicyFuncLimitsInherit(t *testing.T) {
	acc := NewAccumulator(PolicyFunc(func(string) Limits { return Limits{MaxCount: 2} }))
	mustAdd(t, acc, item("a", 1, 1), time.Now())
	next, _ := acc.Next()
	closed := acc.Drain()
	if len(closed) != 1 {
		t.Fatalf("Drain() = %d batches, want 1", len(closed))
	}
	want := Limits{MaxCount: 2, MaxBytes: DefaultMaxBytes, Linger: DefaultLinger}
	if got := closed[0].Limits; got != want {
		t.Errorf("limits = %+v, want %+v", got, want)
	}
	if got := next.Sub(closed[0].Opened); got != DefaultLinger {
		t.Errorf("deadline - opened = %s, want %s", got, DefaultLinger)
	}
}

func TestPendingID(t *testing.T) {
	batch := func(kind string, seqs ...uint64) *Pending {
		p := &Pending{Kind: kind}
		for _, s := range seqs {
			p.Items = append(p.Items, item(kind, s, 1))
		}
		return p
	}
	base := batch("k", 5, 6, 9).ID()
	tests := []struct {
		name string
		p    *Pending
		same bool
	}{
		{"same items", batch("k", 5, 6, 9), true},
		{"same ends, other middle", batch("k", 5, 7, 9), false},
		{"same ends, fewer items", batch("k", 5, 9), false},
		{"other kind", batch("j", 5, 6, 9), false},
	}
	for _, tt := range tests {
		if got := tt.p.ID() == base; got != tt.same {
			t.Errorf("%s: ID %q vs %q equal = %t, want %t", tt.name, tt.p.ID(), base, got, tt.same)
		}
	}
	if want := "b-k-5-9-"; base[:len(want)] != want {
		t.Errorf("ID = %q, want prefix %q", base, want)
	}
}

func TestPendingBatch(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 678, time.UTC)
	p := &Pending{Kind: "k", Items: []Item{item("k", 1, 1), item("k", 2, 1)}}
	b := p.Batch(now)

	if b.ID != p.ID() || b.Kind != "k" || !b.Created.Equal(now) {
		t.Errorf("batch = {%q %q %v}, want {%q k %v}", b.ID, b.Kind, b.Created, p.ID(), now)
	}
	for i, req := range b.Items {
		if !req.Trace.Batched.Equal(now) {
			t.Errorf("item %d Trace.Batched = %v, want %v", i, req.Trace.Batched, now)
		}
		if !p.Items[i].Req.Trace.Batched.IsZero() {
			t.Errorf("item %d: pending request was changed", i)
		}
	}
}

// TestNewItemSize checks that an item's size is what it adds to the
// encoded batch.
func TestNewItemSize(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 678, time.UTC)
	small := &events.WorkRequest{ID: "1", Kind: "k"}
	big := &events.WorkRequest{ID: "2", Kind: "k", Priority: 3,
		Payload: events.Payload(`{"symbol":"ABC","qty":100}`)}

	one := mustItem(t, small, 1, now)
	two := mustItem(t, big, 2, now)
	p1 := &Pending{Kind: "k", Items: []Item{one}}
	p2 := &Pending{Kind: "k", Items: []Item{one, two}}
	// Same ID so that only the items differ.
	b1, b2 := p1.Batch(now), p2.Batch(now)
	b1.ID = b2.ID

	if got, want := encodedLen(t, b2)-encodedLen(t, b1), two.Size; got != want {
		t.Errorf("batch grew by %d bytes, want the item's size %d", got, want)
	}
}

func repeat(kind string, size, n int) []add {
	adds := make([]add, n)
	for i := range adds {
		adds[i] = add{kind, size}
	}
	return adds
}

func item(kind string, seq uint64, size int) Item {
	return Item{Req: &events.WorkRequest{ID: "r", Kind: kind}, Seq: seq, Size: size}
}

func mustItem(t *testing.T, req *events.WorkRequest, seq uint64, now time.Time) Item {
	t.Helper()
	it, err := NewItem(req, seq, now)
	if err != nil {
		t.Fatalf("NewItem: %v", err)
	}
	return it
}

func mustAdd(t *testing.T, acc *Accumulator, it Item, now time.Time) {
	t.Helper()
	if closed, err := acc.Add(it, now); err != nil || len(closed) != 0 {
		t.Fatalf("Add(seq %d) = %d closed, %v; want 0, nil", it.Seq, len(closed), err)
	}
}

func encodedLen(t *testing.T, ev events.Event) int {
	t.Helper()
	data, err := events.Marshal(ev)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return len(data)
}

// seqs lists the stream sequences of each batch, checking that every
// batch holds one kind.
func seqs(t *testing.T, ps []*Pending) closedSeqs {
	t.Helper()
	out := closedSeqs{}
	for _, p := range ps {
		var s []uint64
		for _, it := range p.Items {
			if it.Req.Kind != p.Kind {
				t.Errorf("batch of %s holds an item of %s", p.Kind, it.Req.Kind)
			}
			s = append(s, it.Seq)
		}
		out = append(out, s)
	}
	return out
}
