package agent

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

const (
	// redeliveryDelay is how long a batch nak'ed outside a shutdown waits
	// to be delivered again, and how long a remainder waits to be handed
	// back then.
	redeliveryDelay = time.Second
	// settleTimeout bounds the publish of a remainder and the confirmed
	// ack of a batch.
	settleTimeout = 5 * time.Second
	// restMark starts the suffix of a remainder's ID (see remainderID).
	restMark = ".rest"
)

// handBack settles batch b of which the items rest did not finish: it
// publishes them as a remainder batch of their own (see remainderBatch) on
// the subject of b, then confirms the ack of b, so that only they run
// again, on this agent or another. When the remainder is not published,
// the whole of b is nak'ed instead (see nak) and every item runs again.
//
// Outside a shutdown, the remainder waits redeliveryDelay first, as a
// nak'ed batch would, so that an item that fails again at once is not
// retried in a tight loop.
//
// NOTE: when the agent dies between the publish and the ack, or the ack
// is lost, b is redelivered after the ack wait as well: its items, the
// finished ones included, run a second time. Their results are
// de-duplicated by the results stream within its window; their handlers'
// side effects are not.
func (s *Service) handBack(ctx context.Context, b *batchRun, rest []events.WorkRequest) error {
	if ctx.Err() == nil {
		s.hold(ctx, b, redeliveryDelay)
	}
	// While shutting down, ctx is cancelled already.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()

	if err := s.publishRemainder(pctx, b, rest); err != nil {
		s.log.Warn("remainder not published, whole batch nak'ed", "batch_id", b.batch.ID,
			"unfinished", len(rest), "items", len(b.batch.Items), "err", err)
		return s.nak(ctx, b)
	}
	s.handedBack.Add(int64(len(rest)))
	return b.msg.DoubleAck(pctx)
}

// hold waits d or until ctx ends, reporting progress on b meanwhile so
// that the durable's ack wait, however short, does not redeliver it.
func (s *Service) hold(ctx context.Context, b *batchRun, d time.Duration) {
	end := time.Now().Add(d)
	for left := d; left > 0 && ctx.Err() == nil; left = time.Until(end) {
		_ = b.msg.InProgress()
		sleep(ctx, min(left, s.progressEvery()))
	}
}

// publishRemainder publishes the remainder of b made of rest, with its ID
// as its Nats-Msg-Id, and records the time it took.
func (s *Service) publishRemainder(
	ctx context.Context, b *batchRun, rest []events.WorkRequest,
) error {
	rb := remainderBatch(b, rest, time.Now())
	start := time.Now()
	err := s.conn.Publish(ctx, b.msg.Subject(), rb, rb.ID)
	s.timings.Since("handback", start, err)
	if err != nil {
		return fmt.Errorf("hand back %s: %w", rb.ID, err)
	}
	s.log.Debug("batch handed back", "batch_id", b.batch.ID, "remainder_id", rb.ID,
		"unfinished", len(rest), "items", len(b.batch.Items))
	return nil
}

// nak gives the whole of b back to the stream: at once while shutting
// down (ctx cancelled), so that another agent takes it, and after
// redeliveryDelay otherwise.
func (s *Service) nak(ctx context.Context, b *batchRun) error {
	s.nakkedItems.Add(int64(len(b.batch.Items)))
	if ctx.Err() != nil {
		return b.msg.Nak()
	}
	return b.msg.NakWithDelay(redeliveryDelay)
}

// remainderBatch is the batch that hands back the items rest of b, made
// at now. The items keep their traces, so that their results' stages
// count the time they spent in b too.
func remainderBatch(b *batchRun, rest []events.WorkRequest, now time.Time) *events.Batch {
	return &events.Batch{
		ID:      remainderID(b.batch.ID, rest),
		Kind:    b.kind,
		Created: now,
		Items:   rest,
	}
}

// remainderID is the ID of the batch that hands back the items of batch id:
// "<base>.rest<n>-<hash>", where base is the batcher's batch ID, n counts
// the hand-backs since that batch (the suffix of a remainder is replaced,
// not stacked) and hash is over the items' submit message IDs, in order.
// It serves as the remainder's Nats-Msg-Id, so that within the
// de-duplication window:
//   - a remainder published again, by a retry or by another agent after
//     a redelivery of the same batch with the same items unfinished, is
//     stored once;
//   - a remainder of a remainder is never dropped as a copy of its
//     parent, even with the same items, since n differs;
//   - remainders of one batch with different items differ by hash.
func remainderID(id string, items []events.WorkRequest) string {
	base, n := splitRest(id)
	h := fnv.New64a()
	for i := range items {
		h.Write([]byte(events.SubmitMsgID(&items[i])))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%s%s%d-%016x", base, restMark, n+1, h.Sum64())
}

// splitRest splits a remainder's ID into its base and hand-back count;
// any other ID is its own base, with count 0.
func splitRest(id string) (base string, n int) {
	i := strings.LastIndex(id, restMark)
	if i < 0 {
		return id, 0
	}
	count, hash, ok := strings.Cut(id[i+len(restMark):], "-")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 1 || len(hash) != 16 {
		return id, 0
	}
	return id[:i], n
}
