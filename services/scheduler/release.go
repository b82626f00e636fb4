package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
)

const (
	// releaseWindow bounds the items published to READY before their
	// acks are awaited: one round trip per window instead of per item.
	releaseWindow = 256
	// removeWorkers is how many bucket removals run at once.
	removeWorkers = 64
	// removeBacklog bounds the released items whose bucket entries wait to
	// be removed; releases wait when removals fall this far behind.
	removeBacklog = 4096
)

// releaseLoop releases items as they fall due and as credit comes back.
// It sleeps on one timer set to the next moment anything can change. It
// hands the released items to removeLoop, and tells it when it ends.
func (s *Service) releaseLoop(ctx context.Context) error {
	defer close(s.removals)
	timer := time.NewTimer(idleWait)
	defer timer.Stop()
	for {
		timer.Reset(s.releaseDue(ctx))
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// releaseDue releases every due item the credit allows, highest effective
// priority first, a window of up to releaseWindow items at a time, and
// returns how long to sleep before looking again. The bucket entries of
// released items are removed behind it, by removeLoop, so that a burst is
// released at the pace of READY alone.
func (s *Service) releaseDue(ctx context.Context) time.Duration {
	for ctx.Err() == nil {
		items := s.take(time.Now(), releaseWindow)
		if len(items) == 0 {
			return s.untilNext(time.Now())
		}

		// A release begun is finished, so that its bucket entries go.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), msgTimeout)
		released, failed, err := s.release(rctx, items...)
		cancel()
		s.forget(released)
		if len(failed) > 0 {
			wait := s.giveBack(failed, true)
			s.log.Warn("release failed, retrying", "id", failed[0].req.ID,
				"failed", len(failed), "window", len(items), "retry_in", wait, "err", err)
			return wait
		}
	}
	return 0
}

// published is one item of a window on its way to READY.
type published struct {
	it  *item
	fut jetstream.PubAckFuture
	ack *jetstream.PubAck
	err error
}

// release publishes items to READY in their order, each with its ID and
// attempt as the message ID (events.ReadyMsgID), and waits for the acks.
// The publishes are asynchronous on one connection, so READY keeps their
// order. It returns the released items, whose bucket entries the caller
// then removes (forget), and the items whose publish failed, with the
// first error; the caller gives those back. Publishing comes first: a
// crash before the removal releases the items again after the restart,
// and READY drops the copies; a retry has its own message ID and is not
// dropped.
func (s *Service) release(ctx context.Context, items ...*item) (
	released, failed []*item, err error) {
	window := make([]published, len(items))
	for i, it := range items {
		window[i] = s.publish(it)
	}
	for i := range window {
		window[i].await(ctx)
	}

	for _, p := range window {
		if p.err != nil {
			failed = append(failed, p.it)
			err = cmp.Or(err, p.err)
		}
	}
	return s.landAll(window, len(failed) == 0), failed, err
}

// publish stamps the release time on it and sends it to READY without
// waiting for the ack. A no-responders error is not retried here:
// a later retry would land out of order, so the item is given back.
func (s *Service) publish(it *item) published {
	p := published{it: it}
	it.req.Trace.Released = time.Now()
	subject := events.ReadySubject(it.req.Kind)
	msg, err := bus.Message(subject, &it.req, events.ReadyMsgID(&it.req))
	if err != nil {
		p.err = fmt.Errorf("publish %s: %w", subject, err)
		return p
	}
	p.fut, err = s.conn.JS.PublishMsgAsync(msg, jetstream.WithRetryAttempts(0))
	if err != nil {
		p.err = fmt.Errorf("publish %s: %w", subject, err)
	}
	return p
}

// await waits for the ack of a publish that was sent.
func (p *published) await(ctx context.Context) {
	if p.fut == nil {
		return
	}
	select {
	case p.ack = <-p.fut.Ok():
	case err := <-p.fut.Err():
		p.err = fmt.Errorf("publish %s: %w", p.fut.Msg().Subject, err)
	case <-ctx.Done():
		p.err = fmt.Errorf("publish %s: %w", p.fut.Msg().Subject, ctx.Err())
	}
}

// landAll books the acked items of a window as released and returns them.
// A duplicate was released before (a redelivery after a crash): no result
// will come for that copy, so it must not hold credit. The backoff resets
// only when the whole window went out, so an item that keeps failing
// still backs off.
func (s *Service) landAll(window []published, clean bool) []*item {
	done := make([]*item, 0, len(window))
	s.mu.Lock()
	for _, p := range window {
		if p.err != nil {
			continue
		}
		if p.ack.Duplicate {
			s.land(p.it.req.ID)
		}
		delete(s.held, heldKey(&p.it.req))
		done = append(done, p.it)
	}
	if clean {
		s.backoff = 0
	}
	s.mu.Unlock()

	s.released.Add(int64(len(done)))
	for _, it := range done {
		req := &it.req
		s.rec.Record(opRelease, events.TimingOK, req.Trace.Released.Sub(req.Trace.Accepted))
		s.log.Debug("work released", "id", req.ID, "kind", req.Kind,
			"priority", req.Priority, "late", lateness(it.due, req.Trace.Released))
	}
	return done
}

// forget queues the bucket entries of released items for removeLoop,
// waiting while removeBacklog of them are queued already.
func (s *Service) forget(done []*item) {
	for _, it := range done {
		if it.key != "" {
			s.removals <- it
		}
	}
}

// removeLoop removes the bucket entries of released items, removeWorkers
// at a time, until releaseLoop has ended and every queued entry is done.
// After ctx ends it gives them msgTimeout more. An entry left behind is
// only logged: a restart releases its item again, and READY drops the
// copy, since a release is published before its entry is removed.
func (s *Service) removeLoop(ctx context.Context) error {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(msgTimeout, cancel) })
	defer stop()

	var g errgroup.Group
	for range removeWorkers {
		g.Go(func() error {
			for it := range s.removals {
				s.remove(rctx, it)
			}
			return nil
		})
	}
	return g.Wait()
}

// remove deletes the bucket entry of a released item.
func (s *Service) remove(ctx context.Context, it *item) {
	ctx, cancel := context.WithTimeout(ctx, msgTimeout)
	defer cancel()
	if err := s.store.remove(ctx, it.key); err != nil {
		s.log.Warn("released item left in bucket; a restart releases it again",
			"id", it.req.ID, "err", err)
	}
}

// take pops up to n items to release, highest effective priority first,
// and reserves their credit. It returns none when nothing is due or there
// is no credit.
func (s *Service) take(now time.Time, n int) []*item {
	s.mu.Lock()
	defer s.mu.Unlock()
	var items []*item
	for len(items) < n && (s.q.readyLen() > 0 || s.dueBy(now)) {
		from, ok := s.creditFrom(now)
		if !ok {
			break
		}
		it := s.q.popFrom(now, from)
		if it == nil {
			break
		}
		s.reserve(it, now)
		items = append(items, it)
	}
	return items
}

// dueBy reports whether the earliest waiting item is due at now.
func (s *Service) dueBy(now time.Time) bool {
	due, ok := s.q.nextDue()
	return ok && !due.After(now)
}

// giveBack returns the credit of items whose release failed. When queued
// is true the items go back in their places and the returned wait is the
// release loop's next backoff, doubled once however many failed.
func (s *Service) giveBack(items []*item, queued bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range items {
		s.land(it.req.ID)
		if queued {
			s.q.requeue(it)
		}
	}
	if !queued {
		return 0
	}
	s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
	return s.backoff
}

// untilNext is how long the release loop can sleep: until the next item
// falls due or, when due items wait for credit, until the oldest in-flight
// item expires. Results and new items wake it sooner.
func (s *Service) untilNext(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, ok := s.q.nextDue()
	if s.q.readyLen() > 0 {
		if oldest, found := s.oldestInFlight(); found {
			exp := oldest.Add(s.cfg.InFlightTimeout)
			if !ok || exp.Before(next) {
				next, ok = exp, true
			}
		}
	}
	if !ok {
		return idleWait
	}
	return max(next.Sub(now), 0)
}

// creditFrom returns the lowest priority class that may be released now,
// or false when no credit is left, first dropping in-flight items that are
// past InFlightTimeout. Below ReservedPriority an item needs unreserved
// credit. Callers hold s.mu.
func (s *Service) creditFrom(now time.Time) (int, bool) {
	limit := s.cfg.MaxInFlight
	if limit < 0 {
		return 0, true
	}
	open := limit - s.cfg.ReservedInFlight
	if len(s.inflight) >= limit || s.lowInFlight >= open {
		s.expire(now)
	}
	switch {
	case len(s.inflight) >= limit:
		return 0, false
	case s.lowInFlight >= open:
		return s.cfg.ReservedPriority, true
	}
	return 0, true
}

// allows reports whether it may be released now. Callers hold s.mu.
func (s *Service) allows(it *item, now time.Time) bool {
	from, ok := s.creditFrom(now)
	return ok && class(it) >= from
}

// reserve counts it as in flight. Without a limit nothing is counted.
// Callers hold s.mu.
func (s *Service) reserve(it *item, now time.Time) {
	if s.cfg.MaxInFlight < 0 {
		return
	}
	s.land(it.req.ID) // an ID submitted again while in flight counts once
	low := class(it) < s.cfg.ReservedPriority
	s.inflight[it.req.ID] = flight{at: now, low: low}
	if low {
		s.lowInFlight++
	}
}

// land gives back the credit held by id and reports whether it held any.
// Callers hold s.mu.
func (s *Service) land(id string) bool {
	f, ok := s.inflight[id]
	if !ok {
		return false
	}
	delete(s.inflight, id)
	if f.low {
		s.lowInFlight--
	}
	return true
}

// expire drops in-flight items released InFlightTimeout ago or earlier.
// Callers hold s.mu.
func (s *Service) expire(now time.Time) {
	for id, f := range s.inflight {
		if now.Sub(f.at) >= s.cfg.InFlightTimeout {
			s.land(id)
			s.expired.Add(1)
			s.log.Debug("in-flight item expired without a result", "id", id)
		}
	}
}

// oldestInFlight returns the earliest release time in flight. Callers
// hold s.mu.
func (s *Service) oldestInFlight() (time.Time, bool) {
	var oldest time.Time
	for _, f := range s.inflight {
		if oldest.IsZero() || f.at.Before(oldest) {
			oldest = f.at
		}
	}
	return oldest, !oldest.IsZero()
}

// lateness is how long after due an item was released; zero when it had
// no due time.
func lateness(due, released time.Time) time.Duration {
	if due.IsZero() {
		return 0
	}
	return released.Sub(due)
}
