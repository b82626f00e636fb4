package agent

import (
	"context"
	"errors"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// errKindFull is admit's answer, when told not to wait, for an item whose
// kind has no free slot.
var errKindFull = errors.New("kind at its concurrency cap")

// kindLimits holds a semaphore per capped kind, made on first use.
type kindLimits struct {
	mu   sync.Mutex
	sems map[string]*semaphore.Weighted
}

// kindLimit returns the semaphore of kind, or nil when the kind has no
// cap. A kind's cap is fixed when its first item is admitted.
func (s *Service) kindLimit(kind string) *semaphore.Weighted {
	s.limits.mu.Lock()
	defer s.limits.mu.Unlock()
	if sem, ok := s.limits.sems[kind]; ok {
		return sem
	}
	n, ok := s.cfg.KindConcurrency[kind]
	if !ok {
		e, found := s.reg.lookup(kind)
		if !found {
			// Not cached: the kind may be registered later.
			return nil
		}
		n = e.opts.MaxConcurrent
	}
	var sem *semaphore.Weighted
	if n > 0 {
		sem = semaphore.NewWeighted(int64(n))
	}
	if s.limits.sems == nil {
		s.limits.sems = map[string]*semaphore.Weighted{}
	}
	s.limits.sems[kind] = sem
	return sem
}

// weight is what an item of size payload bytes takes of the bytes cap:
// its size, or the whole cap for an item larger than it, which then runs
// alone.
func (s *Service) weight(size int) int64 {
	return min(int64(size), s.cfg.MaxInFlightBytes)
}

// admit waits until an item may start: a slot of its kind, then room for
// its payload bytes, then a worker, always in this order so that waiters
// cannot deadlock. With wait false it returns errKindFull at once when the
// kind has no free slot. release gives everything back.
func (s *Service) admit(
	ctx context.Context, kind string, size int, wait bool,
) (release func(), err error) {
	sem := s.kindLimit(kind)
	var undo []func()
	release = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}

	if sem != nil {
		if err := takeSem(ctx, sem, 1, wait); err != nil {
			return nil, err
		}
		undo = append(undo, func() { sem.Release(1) })
	}
	if s.bytes != nil {
		w := s.weight(size)
		if err := s.bytes.Acquire(ctx, w); err != nil {
			release()
			return nil, err
		}
		undo = append(undo, func() { s.bytes.Release(w) })
	}
	if !s.acquire(ctx) {
		release()
		return nil, context.Cause(ctx)
	}
	undo = append(undo, s.release)
	return release, nil
}

// takeSem acquires n of sem, waiting only when wait is set.
func takeSem(ctx context.Context, sem *semaphore.Weighted, n int64, wait bool) error {
	if wait {
		return sem.Acquire(ctx, n)
	}
	if !sem.TryAcquire(n) {
		return errKindFull
	}
	return nil
}

// startItems starts the items of b from the i-th on, in order, each once
// admitted, and runs them under work. When one must wait for a slot of its
// kind, the rest of the batch waits in a goroutine of its own (parked), so
// that the caller can go on with batches of other kinds. Once intake ends
// (the agent is stopping), no further item starts: the rest are abandoned,
// to be handed back unrun to other agents (see Service.settle), while the
// items already running finish under work.
func (s *Service) startItems(
	intake, work context.Context, g *errgroup.Group, b *batchRun, i int, parked bool,
) {
	n := len(b.batch.Items)
	for ; i < n; i++ {
		req := &b.batch.Items[i]
		release, err := s.admit(intake, itemKind(b, req), len(req.Payload), parked)
		switch {
		case errors.Is(err, errKindFull):
			s.park(intake, work, g, b, i)
			return
		case err != nil:
			b.abandon(n - i)
			return
		}
		idx := i // i is not per iteration: it is a parameter
		g.Go(func() error {
			defer release()
			b.finish(idx, s.safeRunItem(work, b, req))
			return nil
		})
	}
}

// park starts the items of b from the i-th on in a goroutine of its own.
// At most Workers batches are parked at once; beyond that park waits.
func (s *Service) park(
	intake, work context.Context, g *errgroup.Group, b *batchRun, i int,
) {
	s.log.Debug("batch waits for its kind", "batch_id", b.batch.ID, "kind", b.kind,
		"waiting_items", len(b.batch.Items)-i)
	select {
	case s.parked <- struct{}{}:
	case <-intake.Done():
		b.abandon(len(b.batch.Items) - i)
		return
	}
	g.Go(func() error {
		defer func() { <-s.parked }()
		s.startItems(intake, work, g, b, i, true)
		return nil
	})
}

// itemKind is the kind of req, which defaults to its batch's.
func itemKind(b *batchRun, req *events.WorkRequest) string {
	if req.Kind != "" {
		return req.Kind
	}
	return b.kind
}
