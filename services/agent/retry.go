package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// DefaultRetryJitter is the jitter of a retry policy that sets none: a
// backoff varies by up to 50% either way.
const DefaultRetryJitter = 0.5

// RetryPolicy is how the transient failures of a kind are retried. The
// agent does not wait out a backoff: it submits the item again with the
// next attempt number and NotBefore set to the end of the backoff, and the
// scheduler holds it until then. Zero fields take the agent's defaults
// (see Config).
type RetryPolicy struct {
	// MaxAttempts is how many times an item may run in all; 1 means no
	// retry. Zero means Config.MaxAttempts (3 by default).
	MaxAttempts int
	// Initial is the backoff after the first failed run; each later one
	// doubles. Zero means Config.RetryInitial (200 ms by default).
	Initial time.Duration
	// Max caps one backoff, jitter included. Zero means Config.RetryMax
	// (30 s by default).
	Max time.Duration
	// Jitter is the fraction by which a backoff varies at random either
	// way, at most 1: 0.5 means ±50%. Zero means 0.5; negative means none.
	Jitter float64
}

// Backoff returns how long the retry after failed run n (from 1) waits:
// Initial doubled n-1 times, varied at random by Jitter, at most Max.
// Zero fields count as their package defaults.
func (p RetryPolicy) Backoff(n int) time.Duration {
	p = p.orElse(defaultPolicy())
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	if p.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + p.Jitter*(2*rand.Float64()-1)))
	}
	return min(max(d, 0), p.Max)
}

// orElse returns p with each zero field taken from def.
func (p RetryPolicy) orElse(def RetryPolicy) RetryPolicy {
	p.MaxAttempts = orDefault(p.MaxAttempts, def.MaxAttempts)
	p.Initial = orDefault(p.Initial, def.Initial)
	p.Max = orDefault(p.Max, def.Max)
	p.Jitter = orDefault(p.Jitter, def.Jitter)
	return p
}

// validate reports a negative count or time, a jitter above 1, or a cap
// below the initial backoff.
func (p RetryPolicy) validate() error {
	switch {
	case p.MaxAttempts < 0 || p.Initial < 0 || p.Max < 0:
		return fmt.Errorf("retry policy %+v: negative attempts or backoff", p)
	case p.Jitter > 1:
		return fmt.Errorf("retry policy: jitter %g above 1", p.Jitter)
	case p.Max != 0 && p.Max < p.Initial:
		return fmt.Errorf("retry policy: max %s below initial %s", p.Max, p.Initial)
	}
	return nil
}

// defaultPolicy is the policy of the package defaults.
func defaultPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts: DefaultMaxAttempts,
		Initial:     DefaultRetryInitial,
		Max:         DefaultRetryMax,
		Jitter:      DefaultRetryJitter,
	}
}

// policy is the retry policy of kind: Config.KindRetry over the kind's
// Options.Retry over the agent-wide fields of Config.
func (s *Service) policy(e registered) RetryPolicy {
	agentWide := RetryPolicy{
		MaxAttempts: s.cfg.MaxAttempts,
		Initial:     s.cfg.RetryInitial,
		Max:         s.cfg.RetryMax,
	}
	p := s.cfg.KindRetry[e.kind].orElse(e.opts.Retry).orElse(agentWide)
	p = p.orElse(defaultPolicy())
	if p.Max < p.Initial {
		// Layers that each make sense can still meet badly.
		p.Max = p.Initial
	}
	return p
}

// fail ends an item whose run failed. A transient failure with attempts
// left is submitted again for later (see retryLater); any other failure is
// dead-lettered and published as the item's result, status error.
func (s *Service) fail(
	ctx context.Context, b *batchRun, e registered, req *events.WorkRequest, r run,
) bool {
	reason := failureReason(r.err)
	if reason == "" {
		p := s.policy(e)
		next := time.Now().Add(p.Backoff(req.Attempt))
		switch {
		case req.Attempt >= p.MaxAttempts:
			reason = reasonExhausted
		case !req.Deadline.IsZero() && next.After(req.Deadline):
			reason = reasonDeadline
		default:
			return s.retryLater(ctx, req, next)
		}
	}

	if !s.deadLetter(ctx, b, req, reason, r.err, r.attempts) {
		return false
	}
	return s.publish(ctx, req, s.result(req, r))
}

// retryLater submits req again to the scheduler as its next attempt, due
// at notBefore, so that no worker waits out the backoff. The item gets no
// result now; the message ID (events.SubmitMsgID) makes a second
// submission of the same attempt, after a redelivered batch, a no-op.
func (s *Service) retryLater(ctx context.Context, req *events.WorkRequest,
	notBefore time.Time) bool {
	next := *req
	next.Attempt = req.Attempt + 1
	next.NotBefore = notBefore
	// NotBefore holds the whole wait; the original delay is long past.
	next.Delay = 0
	next.Trace = events.Trace{Submitted: req.Trace.Submitted}

	msgID := events.SubmitMsgID(&next)
	if err := s.conn.Publish(ctx, events.SubmitSubject(req.Kind), &next, msgID); err != nil {
		s.log.Warn("retry not submitted, item will be handed back", "id", req.ID,
			"attempt", next.Attempt, "err", err)
		return false
	}
	s.log.Debug("retry submitted", "id", req.ID, "kind", req.Kind,
		"attempt", next.Attempt, "not_before", notBefore)
	return true
}
