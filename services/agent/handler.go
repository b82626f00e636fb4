package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Errors of this package. Match them with errors.Is.
var (
	// ErrPermanent marks a handler error that no retry can fix, such as
	// bad input. Wrap an error with Permanent to make it one.
	ErrPermanent = errors.New("permanent")
	// ErrKindRegistered is returned by Register for a kind that already
	// has a handler.
	ErrKindRegistered = errors.New("agent: kind already registered")
	// ErrBadKind is returned by Register for a kind that cannot stand as
	// a subject token.
	ErrBadKind = errors.New("agent: bad kind")
)

// Handler does the work of one kind.
//
// Handle gets the request, with Attempt set to the attempt number from 1,
// and returns the output, a JSON document. An error is transient, unless it
// is marked with Permanent: the item runs again after a backoff, by the
// kind's RetryPolicy, possibly on another agent. A handler must return soon
// after ctx is done, and may be called from many goroutines at once.
type Handler interface {
	Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *events.WorkRequest) (events.Payload, error)

// Handle implements Handler.
func (f HandlerFunc) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	return f(ctx, req)
}

// permanentError carries an error through retries unretried.
type permanentError struct{ err error }

func (e *permanentError) Error() string        { return e.err.Error() }
func (e *permanentError) Unwrap() error        { return e.err }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent marks err as permanent: the item is not retried, gets a result
// with status error and is dead-lettered. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// Permanentf is Permanent(fmt.Errorf(format, args...)).
func Permanentf(format string, args ...any) error {
	return Permanent(fmt.Errorf(format, args...))
}

// IsPermanent reports whether err, or an error it wraps, is permanent.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermanent)
}

// Options are a kind's settings, given with its handler.
type Options struct {
	// CacheTTL is how long results of the kind stay in the result cache.
	// Zero or negative means not cached, unless a request sets its own TTL.
	CacheTTL time.Duration
	// MaxConcurrent caps the items of the kind that run at once, within
	// Config.Workers; Config.KindConcurrency overrides it. Zero means no
	// cap but Workers.
	MaxConcurrent int
	// Retry is how transient failures of the kind are retried;
	// Config.KindRetry overrides it field by field. Zero fields take the
	// agent-wide Config.MaxAttempts, RetryInitial and RetryMax, and a
	// jitter of ±50%.
	Retry RetryPolicy
}

// registered is a kind's handler with its options.
type registered struct {
	kind    string
	handler Handler
	opts    Options
}

// Registry maps kinds to handlers. It is safe for concurrent use; kinds
// may be added while a Service runs.
type Registry struct {
	mu    sync.RWMutex
	kinds map[string]registered
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{kinds: make(map[string]registered)}
}

// Register adds the handler of kind. A kind is one subject token, such as
// "http" or "price_report".
func (r *Registry) Register(kind string, h Handler, opts Options) error {
	if !events.ValidToken(kind) {
		return fmt.Errorf("register %q: %w: not a subject token", kind, ErrBadKind)
	}
	if h == nil {
		return fmt.Errorf("register %s: nil handler", kind)
	}
	if opts.MaxConcurrent < 0 {
		return fmt.Errorf("register %s: max concurrent is negative (%d)", kind,
			opts.MaxConcurrent)
	}
	if err := opts.Retry.validate(); err != nil {
		return fmt.Errorf("register %s: %w", kind, err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.kinds[kind]; ok {
		return fmt.Errorf("register %s: %w", kind, ErrKindRegistered)
	}
	r.kinds[kind] = registered{kind: kind, handler: h, opts: opts}
	return nil
}

// Kinds returns the registered kinds, sorted.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	kinds := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	return kinds
}

func (r *Registry) lookup(kind string) (registered, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.kinds[kind]
	return e, ok
}

// NewBuiltins returns a registry with the built-in kinds, configured by
// cfg: http (HTTP requests to allowed hosts), csv (group-by statistics of
// a CSV file) and sleep (a timed no-op for tests and load).
func NewBuiltins(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	reg := NewRegistry()
	builtins := []struct {
		kind string
		h    Handler
		ttl  time.Duration
	}{
		{"http", newHTTPHandler(cfg.HTTP), cfg.HTTP.CacheTTL},
		{"csv", newCSVHandler(cfg.CSV), cfg.CSV.CacheTTL},
		{"sleep", sleepHandler{}, 0},
	}
	for _, b := range builtins {
		if err := reg.Register(b.kind, b.h, Options{CacheTTL: b.ttl}); err != nil {
			return nil, err
		}
	}
	return reg, nil
}
