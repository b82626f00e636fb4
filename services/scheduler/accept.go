package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// rejection is why a WORK message is dead-lettered.
type rejection struct {
	reason string // short and readable, such as "invalid request"
	err    error
}

// admission is what schedule does with an accepted item.
type admission int

const (
	admitStore     admission = iota // keep it in the bucket until released
	admitRelease                    // release it now, bypassing the bucket
	admitDuplicate                  // a redelivery of an item held already
)

// handle accepts, dead-letters or naks one WORK message. A panic naks it.
func (s *Service) handle(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	// A message taken in is finished even when the service is stopping.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), msgTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic handling work", "subject", msg.Subject(), "panic", r)
			s.nak(msg)
		}
	}()

	meta, err := msg.Metadata()
	if err != nil {
		s.log.Error("work message without metadata", "subject", msg.Subject(), "err", err)
		s.nak(msg)
		return
	}

	req, rej := s.decode(msg, meta)
	if rej != nil {
		err := s.reject(ctx, msg, meta, req, rej)
		status := "dead"
		if err != nil {
			status = events.TimingError
		}
		s.rec.Record(opAccept, status, time.Since(start))
		if err != nil {
			s.log.Warn("dead letter failed, will retry", "subject", msg.Subject(), "err", err)
			s.nak(msg)
		}
		return
	}

	err = s.schedule(ctx, msg, req)
	s.rec.Since(opAccept, start, err)
	if err != nil {
		s.log.Warn("work not accepted, will retry", "id", req.ID, "err", err)
		s.nak(msg)
	}
}

// decode reads the request and stamps its ID and trace. It returns the
// request, when readable, with a rejection when it must not be scheduled.
func (s *Service) decode(msg jetstream.Msg, meta *jetstream.MsgMetadata) (
	*events.WorkRequest, *rejection) {
	var req events.WorkRequest
	if err := events.Unmarshal(msg.Data(), &req); err != nil {
		rej := &rejection{reason: events.Reason(err), err: err}
		id := events.PeekID(msg.Data())
		if id != "" && !errors.Is(err, events.ErrWrongType) {
			// Unreadable as a whole, but whoever waits for id hears why.
			return &events.WorkRequest{ID: id}, rej
		}
		return nil, rej
	}
	if req.ID == "" {
		// The stream sequence is the same on every redelivery.
		req.ID = fmt.Sprintf("w-%d", meta.Sequence.Stream)
	}

	kind := events.LastToken(msg.Subject())
	if req.Kind == "" {
		req.Kind = kind
	}
	if req.Kind != kind || msg.Subject() != events.SubmitSubject(kind) {
		err := fmt.Errorf("work request %s: kind %q on subject %s, want %s", req.ID,
			req.Kind, msg.Subject(), events.SubmitSubject(req.Kind))
		return &req, &rejection{reason: "kind mismatch", err: err}
	}
	if err := req.Validate(); err != nil {
		return &req, &rejection{reason: "invalid request", err: err}
	}

	if req.Trace.Submitted.IsZero() {
		req.Trace.Submitted = meta.Timestamp
	}
	req.Trace.Accepted = time.Now()
	return &req, nil
}

// reject dead-letters msg and terminates it. When the request was read, a
// result with status dead first tells whoever waits for it.
func (s *Service) reject(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata,
	req *events.WorkRequest, rej *rejection) error {
	kind := events.LastToken(msg.Subject())
	dl := &events.DeadLetter{
		Kind: kind, Subject: msg.Subject(), Service: Name,
		Reason: rej.reason, Error: rej.err.Error(),
		Attempts: int(meta.NumDelivered), Data: msg.Data(),
	}
	if req != nil {
		dl.ID = req.ID
		if err := s.publishDead(ctx, kind, req, rej); err != nil {
			return err
		}
	}

	if err := s.conn.DeadLetter(ctx, dl); err != nil {
		return err
	}
	s.dead.Add(1)
	if err := msg.Term(); err != nil {
		s.log.Debug("term failed", "subject", msg.Subject(), "err", err)
	}
	return nil
}

// publishDead publishes the result of a rejected request, de-duplicated by
// its ID so that a redelivery does not publish it twice.
func (s *Service) publishDead(ctx context.Context, kind string, req *events.WorkRequest,
	rej *rejection) error {
	res := events.DeadResult(req, rej.reason, rej.err, time.Now())
	res.Kind = kind
	return s.conn.Publish(ctx, events.ResultSubject(kind), res, events.ResultMsgID(req))
}

// schedule releases req at once when it is due, nothing due waits before
// it and there is credit; otherwise it stores req in the bucket and queues
// it. Either way the WORK message is acked only after that step.
func (s *Service) schedule(ctx context.Context, msg jetstream.Msg,
	req *events.WorkRequest) error {
	it := newItem(*req)
	switch s.admit(it, time.Now()) {
	case admitDuplicate:
		s.log.Debug("redelivered work already held", "id", req.ID)
		s.ack(ctx, msg)
		return nil
	case admitRelease:
		// Released at once, it was never stored: nothing to remove.
		if _, _, err := s.release(ctx, it); err != nil {
			s.giveBack([]*item{it}, false)
			return err
		}
		s.accepted.Add(1)
		s.ack(ctx, msg)
		return nil
	}

	key, err := s.store.put(ctx, &it.req)
	if err != nil {
		return err
	}
	it.key = key
	s.hold(it, time.Now())
	s.notify()
	s.accepted.Add(1)
	s.ack(ctx, msg)
	s.log.Debug("work held", "id", req.ID, "kind", req.Kind, "priority", req.Priority,
		"due", it.due)
	return nil
}

// admit decides what schedule does with it, and reserves credit for an
// item it releases at once.
func (s *Service) admit(it *item, now time.Time) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[heldKey(&it.req)] {
		return admitDuplicate
	}
	if it.req.Attempt > 1 {
		// A retry: the run before it has ended without a result, and a
		// retry waiting for its backoff holds no credit.
		s.land(it.req.ID)
	}
	s.q.promote(now)
	if it.due.After(now) || s.q.readyLen() > 0 || !s.allows(it, now) {
		return admitStore
	}
	s.reserve(it, now)
	return admitRelease
}

// heldKey identifies one attempt of a request among the held items: a
// redelivered WORK message of an attempt is a duplicate, a retry (the
// agent's resubmission with the next attempt) is not.
func heldKey(req *events.WorkRequest) string {
	return events.ReadyMsgID(req)
}

// ack waits for the server to confirm the ack: a WORK message redelivered
// after its item was released would schedule the item again, so acks are
// not fire-and-forget here. A failed ack still only means a redelivery,
// which the held IDs and READY's de-duplication absorb.
func (s *Service) ack(ctx context.Context, msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), msgTimeout)
	defer cancel()
	if err := msg.DoubleAck(ctx); err != nil {
		s.log.Debug("ack failed", "subject", msg.Subject(), "err", err)
	}
}

func (s *Service) nak(msg jetstream.Msg) {
	if err := msg.NakWithDelay(retryDelay); err != nil {
		s.log.Debug("nak failed", "subject", msg.Subject(), "err", err)
	}
}
