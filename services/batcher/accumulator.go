package batcher

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Limits of a batch when neither the Config nor the Policy says otherwise.
const (
	DefaultMaxCount = 32
	DefaultMaxBytes = 256 << 10
	DefaultLinger   = 10 * time.Millisecond
)

// DefaultLimits returns the limits made of DefaultMaxCount,
// DefaultMaxBytes and DefaultLinger.
func DefaultLimits() Limits {
	return Limits{
		MaxCount: DefaultMaxCount,
		MaxBytes: DefaultMaxBytes,
		Linger:   DefaultLinger,
	}
}

// Limits bound one batch. A batch closes on whichever limit it reaches
// first.
type Limits struct {
	// MaxCount is the most items in a batch. Zero inherits.
	MaxCount int
	// MaxBytes bounds the summed encoded msgpack size of a batch's items,
	// in bytes. An item larger than MaxBytes is sent alone. Zero inherits.
	MaxBytes int
	// Linger is how long a batch stays open after its first item arrives.
	// Zero inherits.
	Linger time.Duration
}

// inherit returns l with its zero fields taken from def.
func (l Limits) inherit(def Limits) Limits {
	if l.MaxCount == 0 {
		l.MaxCount = def.MaxCount
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = def.MaxBytes
	}
	if l.Linger == 0 {
		l.Linger = def.Linger
	}
	return l
}

func (l Limits) validate() error {
	if l.MaxCount < 0 || l.MaxBytes < 0 || l.Linger < 0 {
		return fmt.Errorf("negative limit in %+v", l)
	}
	return nil
}

// Policy decides the limits of each kind's batches. The accumulator asks
// once per batch, when the batch opens, so a policy may answer differently
// from one batch to the next; an adaptive policy does exactly that. It is
// called from a single goroutine.
type Policy interface {
	Limits(kind string) Limits
}

// PolicyFunc adapts a function to a Policy.
type PolicyFunc func(kind string) Limits

// Limits implements Policy.
func (f PolicyFunc) Limits(kind string) Limits { return f(kind) }

// Static is a Policy of fixed limits: Default for every kind, overridden
// field by field by the kind's entry in PerKind.
type Static struct {
	Default Limits
	PerKind map[string]Limits
}

// Limits implements Policy.
func (s Static) Limits(kind string) Limits {
	def := s.Default.inherit(DefaultLimits())
	if l, ok := s.PerKind[kind]; ok {
		return l.inherit(def)
	}
	return def
}

// Item is one work request waiting in a batch.
type Item struct {
	// Req is the decoded request; its Kind chooses the batch.
	Req *events.WorkRequest
	// Seq is the message's sequence in the READY stream.
	Seq uint64
	// Size is Req's encoded msgpack size in bytes.
	Size int
	// Msg is the message to acknowledge once the batch is published. The
	// accumulator does not touch it; it may be nil.
	Msg jetstream.Msg
}

// NewItem measures req as it will travel in a batch, Trace.Batched set to
// now, and returns it as the item of stream sequence seq.
func NewItem(req *events.WorkRequest, seq uint64, now time.Time) (Item, error) {
	probe := *req
	probe.Trace.Batched = now
	data, err := events.Marshal(&probe)
	if err != nil {
		return Item{}, fmt.Errorf("measure request %s: %w", req.ID, err)
	}
	return Item{Req: req, Seq: seq, Size: len(data)}, nil
}

// Pending is a batch of one kind, open or closed but not yet published.
type Pending struct {
	Kind string
	// Limits are the ones the policy gave when the batch opened.
	Limits Limits
	// Opened is when the first item arrived.
	Opened time.Time
	Items  []Item
	// Bytes is the sum of the items' sizes.
	Bytes int
}

// Deadline is when the batch closes if no other limit closes it first.
func (p *Pending) Deadline() time.Time { return p.Opened.Add(p.Limits.Linger) }

// ID names the batch after its items' stream sequences: the kind, the
// first and last sequence, and a hash of them all. The same items in the
// same order give the same ID, which lets the stream drop a batch that is
// published again after a redelivery.
func (p *Pending) ID() string {
	if len(p.Items) == 0 {
		return "b-" + p.Kind + "-empty"
	}
	h := fnv.New32a()
	var buf []byte
	for _, it := range p.Items {
		buf = strconv.AppendUint(buf[:0], it.Seq, 10)
		h.Write(append(buf, ','))
	}
	first, last := p.Items[0].Seq, p.Items[len(p.Items)-1].Seq
	return fmt.Sprintf("b-%s-%d-%d-%08x", p.Kind, first, last, h.Sum32())
}

// Batch builds the event to publish, stamping every item's Trace.Batched
// and the batch's Created with now, and every item's type and schema
// version as Marshal would.
func (p *Pending) Batch(now time.Time) *events.Batch {
	b := &events.Batch{
		ID:      p.ID(),
		Kind:    p.Kind,
		Created: now,
		Items:   make([]events.WorkRequest, len(p.Items)),
	}
	for i, it := range p.Items {
		b.Items[i] = *it.Req
		b.Items[i].Meta = events.Meta{Type: events.TypeWorkRequest, V: events.SchemaVersion}
		b.Items[i].Trace.Batched = now
	}
	return b
}

// full reports whether the batch has reached its count or byte limit.
func (p *Pending) full() bool {
	return len(p.Items) >= p.Limits.MaxCount || p.Bytes >= p.Limits.MaxBytes
}

// fits reports whether it can join the batch without passing MaxBytes.
// An empty batch takes any item, however large.
func (p *Pending) fits(it Item) bool {
	return len(p.Items) == 0 || p.Bytes+it.Size <= p.Limits.MaxBytes
}

// Accumulator keeps one open batch per kind and closes batches on their
// limits. It does no I/O and is not safe for concurrent use: one goroutine
// owns it and publishes what it returns.
type Accumulator struct {
	policy Policy
	open   map[string]*Pending
}

// ErrNoKind is returned by Add for an item whose request has no kind.
var ErrNoKind = errors.New("batcher: item without a kind")

// NewAccumulator returns an empty accumulator that asks policy for the
// limits of each new batch.
func NewAccumulator(policy Policy) *Accumulator {
	return &Accumulator{policy: policy, open: make(map[string]*Pending)}
}

// Add puts it into the open batch of its kind, opening one at now if
// needed, and returns the batches that closed, oldest first: the previous
// batch when it could not take the item's bytes, and the batch that the
// item filled.
func (a *Accumulator) Add(it Item, now time.Time) ([]*Pending, error) {
	kind := it.Req.Kind
	if kind == "" {
		return nil, ErrNoKind
	}

	var closed []*Pending
	p := a.open[kind]
	if p != nil && !p.fits(it) {
		closed = append(closed, a.take(kind))
		p = nil
	}
	if p == nil {
		p = a.openBatch(kind, now)
	}

	p.Items = append(p.Items, it)
	p.Bytes += it.Size
	if p.full() {
		closed = append(closed, a.take(kind))
	}
	return closed, nil
}

// Expire closes and returns the batches whose linger has passed at now,
// earliest deadline first.
func (a *Accumulator) Expire(now time.Time) []*Pending {
	var closed []*Pending
	for kind, p := range a.open {
		if !p.Deadline().After(now) {
			closed = append(closed, a.take(kind))
		}
	}
	sortByDeadline(closed)
	return closed
}

// Next returns the earliest deadline of the open batches, and false when
// none is open.
func (a *Accumulator) Next() (time.Time, bool) {
	var next time.Time
	for _, p := range a.open {
		if d := p.Deadline(); next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next, !next.IsZero()
}

// Drain closes and returns every open batch, earliest deadline first.
func (a *Accumulator) Drain() []*Pending {
	closed := make([]*Pending, 0, len(a.open))
	for kind := range a.open {
		closed = append(closed, a.take(kind))
	}
	sortByDeadline(closed)
	return closed
}

// Open is the number of open batches.
func (a *Accumulator) Open() int { return len(a.open) }

func (a *Accumulator) openBatch(kind string, now time.Time) *Pending {
	limits := a.policy.Limits(kind).inherit(DefaultLimits())
	p := &Pending{Kind: kind, Limits: limits, Opened: now}
	a.open[kind] = p
	return p
}

func (a *Accumulator) take(kind string) *Pending {
	p := a.open[kind]
	delete(a.open, kind)
	return p
}

func sortByDeadline(ps []*Pending) {
	slices.SortFunc(ps, func(x, y *Pending) int {
		return cmp.Or(x.Deadline().Compare(y.Deadline()), cmp.Compare(x.Kind, y.Kind))
	})
}
