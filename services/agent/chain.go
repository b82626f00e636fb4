package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// run is how one item was answered: by its handler, through the
// middleware, or from the result cache.
type run struct {
	output   events.Payload
	err      error
	attempts int
	started  time.Time
	// took is the handler time, zero for a cache hit.
	took   time.Duration
	cached bool
}

// newRetry returns the retry middleware for cfg: transient errors are
// retried with exponential backoff and jitter, permanent ones and panics
// are not.
func newRetry(cfg Config) middleware.Retry {
	return middleware.Retry{
		MaxRetries:          cfg.MaxAttempts - 1,
		InitialInterval:     cfg.RetryInitial,
		MaxInterval:         cfg.RetryMax,
		Multiplier:          2,
		RandomizationFactor: 0.5,
		ShouldRetry: func(p middleware.RetryParams) bool {
			return !IsPermanent(p.Err) && !isPanic(p.Err)
		},
	}
}

// invoke runs h for req through watermill middleware, outermost first: a
// timeout for the whole item, retries, and panic recovery per attempt.
// The handler sees ctx, bounded by the timeout, through the message.
func (s *Service) invoke(ctx context.Context, h Handler, req *events.WorkRequest) run {
	r := run{started: time.Now()}
	attempt := func(msg *message.Message) ([]*message.Message, error) {
		r.attempts++
		req.Attempt = r.attempts
		out, err := h.Handle(msg.Context(), req)
		r.output = out
		if err != nil {
			s.log.Debug("attempt failed", "id", req.ID, "kind", req.Kind,
				"attempt", r.attempts, "err", err)
		}
		return nil, err
	}

	chain := middleware.Timeout(s.cfg.ItemTimeout)(
		s.retry.Middleware(
			middleware.Recoverer(attempt)))
	_, r.err = chain(message.NewMessageWithContext(ctx, req.ID, nil))

	r.took = time.Since(r.started)
	if r.err != nil {
		r.output = nil
	}
	return r
}

// isPanic reports whether err is a handler panic caught by Recoverer.
func isPanic(err error) bool {
	var p middleware.RecoveredPanicError
	return errors.As(err, &p)
}

// errorText is the error as a result shows it: a panic without its stack.
func errorText(err error) string {
	var p middleware.RecoveredPanicError
	if errors.As(err, &p) {
		return fmt.Sprintf("handler panic: %v", p.V)
	}
	return err.Error()
}
