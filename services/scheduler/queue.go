package scheduler

import (
	"container/heap"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// item is one accepted work request held until it is released.
type item struct {
	req events.WorkRequest
	// due is the earliest time the item may be released.
	due time.Time
	// since is when the item began to wait for credit: the later of due
	// and acceptance. Aging counts from here.
	since time.Time
	// seq breaks ties between items with the same times: first come,
	// first served.
	seq uint64
	// key is the item's key in the pending bucket; empty when the item
	// was never stored.
	key string
}

// newItem wraps an accepted request, whose trace is already stamped.
func newItem(req events.WorkRequest) *item {
	due := req.Due()
	since := due
	if req.Trace.Accepted.After(since) {
		since = req.Trace.Accepted
	}
	return &item{req: req, due: due, since: since}
}

// itemHeap is a binary heap of items under the order less; it implements
// heap.Interface.
type itemHeap struct {
	items []*item
	less  func(a, b *item) bool
}

func (h *itemHeap) Len() int           { return len(h.items) }
func (h *itemHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *itemHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *itemHeap) Push(x any)         { h.items = append(h.items, x.(*item)) }

func (h *itemHeap) Pop() any {
	n := len(h.items) - 1
	it := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	return it
}

// peek returns the first item without removing it, or nil.
func (h *itemHeap) peek() *item {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

// byDue orders the timer heap: earliest due first.
func byDue(a, b *item) bool {
	if !a.due.Equal(b.due) {
		return a.due.Before(b.due)
	}
	return a.seq < b.seq
}

// bySince orders a priority class: longest waiting first.
func bySince(a, b *item) bool {
	if !a.since.Equal(b.since) {
		return a.since.Before(b.since)
	}
	return a.seq < b.seq
}

// queue holds the scheduler's accepted items: a timer heap of items that
// are not due yet, and per priority a heap of due items waiting for credit.
// It is not safe for concurrent use.
type queue struct {
	// aging is the wait that adds one to an item's priority; zero or
	// negative turns aging off.
	aging   time.Duration
	timers  itemHeap
	classes [events.MaxPriority + 1]itemHeap
	ready   int
	seq     uint64
}

func newQueue(aging time.Duration) *queue {
	q := &queue{aging: aging, timers: itemHeap{less: byDue}}
	for p := range q.classes {
		q.classes[p].less = bySince
	}
	return q
}

// add places a newly accepted item: in the timer heap when it is not due
// at now, else in its priority class.
func (q *queue) add(it *item, now time.Time) {
	q.seq++
	it.seq = q.seq
	if it.due.After(now) {
		heap.Push(&q.timers, it)
		return
	}
	q.pushReady(it)
}

// requeue puts back a due item whose release failed; it keeps its place.
func (q *queue) requeue(it *item) { q.pushReady(it) }

// promote moves the items that are due at now into their classes.
func (q *queue) promote(now time.Time) {
	for q.timers.Len() > 0 && !q.timers.peek().due.After(now) {
		q.pushReady(heap.Pop(&q.timers).(*item))
	}
}

// pop removes and returns the due item with the highest effective
// priority at now, or nil when none is due. Between equal effective
// priorities the item that has waited longer wins.
func (q *queue) pop(now time.Time) *item { return q.popFrom(now, 0) }

// popFrom is pop among the items whose own priority is minClass or more.
func (q *queue) popFrom(now time.Time, minClass int) *item {
	q.promote(now)
	best, bestPrio := -1, 0
	for p := max(minClass, 0); p < len(q.classes); p++ {
		head := q.classes[p].peek()
		if head == nil {
			continue
		}
		prio := q.effective(head, now)
		if best < 0 || prio > bestPrio ||
			prio == bestPrio && bySince(head, q.classes[best].peek()) {
			best, bestPrio = p, prio
		}
	}
	if best < 0 {
		return nil
	}
	q.ready--
	return heap.Pop(&q.classes[best]).(*item)
}

// effective is the item's priority at now, raised by aging. Only the head
// of each class needs it: the rest of a class has waited less.
func (q *queue) effective(it *item, now time.Time) int {
	prio := class(it)
	if q.aging > 0 && now.After(it.since) {
		prio += int(now.Sub(it.since) / q.aging)
	}
	return prio
}

// nextDue returns when the earliest item that is not yet due falls due.
func (q *queue) nextDue() (time.Time, bool) {
	if it := q.timers.peek(); it != nil {
		return it.due, true
	}
	return time.Time{}, false
}

// readyLen is the number of due items waiting for credit.
func (q *queue) readyLen() int { return q.ready }

// Len is the number of items held, due or not.
func (q *queue) Len() int { return q.ready + q.timers.Len() }

func (q *queue) pushReady(it *item) {
	heap.Push(&q.classes[class(it)], it)
	q.ready++
}

// class is the item's priority class. Requests are validated on accept;
// the clamp guards items read back from the bucket.
func class(it *item) int {
	return min(max(it.req.Priority, 0), events.MaxPriority)
}
