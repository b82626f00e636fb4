package scheduler

import (
	"context"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// releaseLoop releases items as they fall due and as credit comes back.
// It sleeps on one timer set to the next moment anything can change.
func (s *Service) releaseLoop(ctx context.Context) error {
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
// priority first, and returns how long to sleep before looking again.
func (s *Service) releaseDue(ctx context.Context) time.Duration {
	for ctx.Err() == nil {
		it := s.take(time.Now())
		if it == nil {
			return s.untilNext(time.Now())
		}

		// A release begun is finished, so that its bucket entry goes.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), msgTimeout)
		err := s.release(rctx, it)
		cancel()
		if err != nil {
			wait := s.giveBack(it, true)
			s.log.Warn("release failed, retrying", "id", it.req.ID, "retry_in", wait,
				"err", err)
			return wait
		}
	}
	return 0
}

// release publishes the item to READY with its ID and attempt as the
// message ID (events.ReadyMsgID), then removes it from the bucket. A
// crash in between releases it again after the restart, and READY drops
// the copy; a retry has its own message ID and is not dropped.
func (s *Service) release(ctx context.Context, it *item) error {
	req := it.req
	req.Trace.Released = time.Now()
	msgID := events.ReadyMsgID(&req)
	ack, err := s.conn.PublishAck(ctx, events.ReadySubject(req.Kind), &req, msgID)
	if err != nil {
		return err
	}
	if ack.Duplicate {
		// Released before (a redelivery after a crash): no result will
		// come for this copy, so it must not hold credit.
		s.log.Debug("work already released", "id", req.ID)
		s.mu.Lock()
		s.land(req.ID)
		s.mu.Unlock()
	}
	s.released.Add(1)
	s.rec.Record(opRelease, events.TimingOK, req.Trace.Released.Sub(req.Trace.Accepted))
	s.log.Debug("work released", "id", req.ID, "kind", req.Kind, "priority", req.Priority,
		"late", lateness(it.due, req.Trace.Released))

	s.mu.Lock()
	delete(s.held, heldKey(&req))
	s.backoff = 0
	s.mu.Unlock()
	if it.key == "" {
		return nil
	}
	if err := s.store.remove(ctx, it.key); err != nil {
		s.log.Warn("released item left in bucket; a restart releases it again",
			"id", req.ID, "err", err)
	}
	return nil
}

// take pops the next item to release and reserves its credit, or returns
// nil when nothing is due or there is no credit.
func (s *Service) take(now time.Time) *item {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q.readyLen() == 0 && !s.dueBy(now) {
		return nil
	}
	from, ok := s.creditFrom(now)
	if !ok {
		return nil
	}
	it := s.q.popFrom(now, from)
	if it != nil {
		s.reserve(it, now)
	}
	return it
}

// dueBy reports whether the earliest waiting item is due at now.
func (s *Service) dueBy(now time.Time) bool {
	due, ok := s.q.nextDue()
	return ok && !due.After(now)
}

// giveBack returns the credit of an item whose release failed. When
// queued is true the item goes back in its place and the returned wait
// is the release loop's next backoff.
func (s *Service) giveBack(it *item, queued bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.land(it.req.ID)
	if !queued {
		return 0
	}
	s.q.requeue(it)
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
