package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Dead-letter reasons of work items.
const (
	reasonDeadline  = "deadline passed"
	reasonUnknown   = "unknown kind"
	reasonPermanent = "permanent failure"
	reasonPanic     = "handler panic"
	reasonExhausted = "attempts exhausted"
)

// runItem takes one item to its end: a published result, a retry
// submitted or a dead letter. It returns false when the item could not be
// finished (stopped by the drain, or NATS refused the result, retry or
// dead letter), so that it is handed back and runs again (see handBack);
// the items of its batch that did finish are not.
func (s *Service) runItem(ctx context.Context, b *batchRun, req *events.WorkRequest) bool {
	start := time.Now()
	if req.Kind == "" {
		req.Kind = b.kind
	}
	if !req.Deadline.IsZero() && start.After(req.Deadline) {
		err := fmt.Errorf("item %s: deadline %s passed before it started",
			req.ID, req.Deadline.Format(time.RFC3339Nano))
		return s.giveUp(ctx, b, req, start, reasonDeadline, err)
	}
	e, ok := s.reg.lookup(req.Kind)
	if !ok {
		err := fmt.Errorf("item %s: no handler for kind %q", req.ID, req.Kind)
		return s.giveUp(ctx, b, req, start, reasonUnknown, err)
	}

	req.Attempt = max(req.Attempt, 1)
	r := s.execute(ctx, e, req)
	if ctx.Err() != nil {
		return false
	}
	// Runs before this one ended in a retry.
	r.attempts += req.Attempt - 1
	if r.err != nil {
		return s.fail(ctx, b, e, req, r)
	}
	return s.publish(ctx, req, s.result(req, r))
}

// runHandler runs req through its handler and records the run's time,
// the same duration the result reports as Stages.Run.
func (s *Service) runHandler(ctx context.Context, e registered, req *events.WorkRequest) run {
	r := s.invoke(ctx, e.handler, req)
	if ctx.Err() == nil && r.attempts > 0 {
		status := events.TimingOK
		if r.err != nil {
			status = events.TimingError
		}
		s.timings.Record(e.kind, status, r.took)
	}
	return r
}

// failureReason names why a run failed for good, for the dead-letter
// stream, or is empty for a transient failure, which may be retried.
func failureReason(err error) string {
	switch {
	case isPanic(err):
		return reasonPanic
	case IsPermanent(err):
		return reasonPermanent
	}
	return ""
}

// giveUp dead-letters an item that gets no handler run and publishes its
// result with status dead.
func (s *Service) giveUp(
	ctx context.Context, b *batchRun, req *events.WorkRequest,
	start time.Time, reason string, err error,
) bool {
	if !s.deadLetter(ctx, b, req, reason, err, 0) {
		return false
	}
	res := s.result(req, run{started: start, err: err})
	res.Status = events.StatusDead
	return s.publish(ctx, req, res)
}

// deadLetter records req on the dead-letter stream of its kind.
func (s *Service) deadLetter(
	ctx context.Context, b *batchRun, req *events.WorkRequest,
	reason string, cause error, attempts int,
) bool {
	data, err := events.Marshal(req)
	if err != nil {
		s.log.Warn("item not encodable for its dead letter", "id", req.ID, "err", err)
	}
	err = s.conn.DeadLetter(ctx, &events.DeadLetter{
		ID:       req.ID,
		Kind:     req.Kind,
		Subject:  b.msg.Subject(),
		Service:  serviceName,
		Reason:   reason,
		Error:    cause.Error(),
		Attempts: attempts,
		Data:     data,
	})
	if err != nil {
		s.log.Warn("dead letter failed, item will be handed back", "id", req.ID,
			"reason", reason, "err", err)
		return false
	}
	return true
}

// result builds the result of req from how it was answered.
func (s *Service) result(req *events.WorkRequest, r run) *events.Result {
	res := &events.Result{
		ID:       req.ID,
		Kind:     req.Kind,
		Status:   events.StatusOK,
		Output:   r.output,
		Cached:   r.cached,
		Attempts: r.attempts,
		Priority: req.Priority,
		Agent:    s.name,
		Started:  r.started,
		Finished: time.Now(),
	}
	if r.err != nil {
		res.Status = events.StatusError
		res.Error = errorText(r.err)
	}
	res.Stages = stages(req.Trace, res.Started, res.Finished, r.took)
	return res
}

// stages splits an item's life into the stages its trace shows; a stage
// with a missing end is zero.
func stages(t events.Trace, started, finished time.Time, took time.Duration) events.Stages {
	return events.Stages{
		Queued:    between(t.Submitted, t.Accepted),
		Scheduled: between(t.Accepted, t.Released),
		Batched:   between(t.Released, t.Batched),
		Wait:      between(t.Batched, started),
		Run:       events.Duration(took),
		EndToEnd:  between(t.Submitted, finished),
	}
}

// between is b-a, or zero when either is unknown or clocks disagree.
func between(a, b time.Time) events.Duration {
	if a.IsZero() || b.IsZero() || b.Before(a) {
		return 0
	}
	return events.Duration(b.Sub(a))
}

// publish sends res to the results stream, de-duplicated by the request
// ID, and to the request's reply subject when it has one.
func (s *Service) publish(ctx context.Context, req *events.WorkRequest, res *events.Result) bool {
	msgID := ""
	if res.ID != "" {
		msgID = events.ResultMsgID(req)
	}
	if err := s.conn.Publish(ctx, events.ResultSubject(res.Kind), res, msgID); err != nil {
		s.log.Warn("result not published, item will be handed back", "id", res.ID,
			"err", err)
		return false
	}
	if req.ReplyTo != "" {
		s.reply(req.ReplyTo, res)
	}
	return true
}

// reply sends a copy of res on core NATS. The results stream has the
// result already, so a failure is only logged.
func (s *Service) reply(subject string, res *events.Result) {
	msg, err := bus.Message(subject, res, "")
	if err == nil {
		err = s.conn.NC.PublishMsg(msg)
	}
	if err != nil {
		s.log.Debug("reply not sent", "id", res.ID, "reply_to", subject, "err", err)
	}
}
