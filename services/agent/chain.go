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
	output events.Payload
	err    error
	// attempts counts the handler's runs for the request, earlier
	// attempts included; zero when it did not run (a cache hit).
	attempts int
	started  time.Time
	// took is the handler time, zero for a cache hit.
	took   time.Duration
	cached bool
}

// invoke runs h once for req through watermill middleware, outermost
// first: a timeout and panic recovery. The handler sees ctx, bounded by the
// timeout, through the message. A failed run is not retried here: the
// caller submits a retry for later (see Service.fail), so that no worker
// waits out a backoff.
func (s *Service) invoke(ctx context.Context, h Handler, req *events.WorkRequest) run {
	r := run{started: time.Now()}
	attempt := func(msg *message.Message) ([]*message.Message, error) {
		r.attempts = 1
		out, err := h.Handle(msg.Context(), req)
		r.output = out
		if err != nil {
			s.log.Debug("attempt failed", "id", req.ID, "kind", req.Kind,
				"attempt", req.Attempt, "err", err)
		}
		return nil, err
	}

	chain := middleware.Timeout(s.cfg.ItemTimeout)(middleware.Recoverer(attempt))
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
