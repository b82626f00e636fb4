package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Statuses of the "<kind>.cache" timing.
const (
	cacheHit  = "hit"
	cacheMiss = "miss"
)

// ResultHash is the hash in a result's cache key: the first 32 hex digits
// of the SHA-256 of the kind, a newline and the canonical payload.
func ResultHash(kind string, payload events.Payload) (string, error) {
	canon, err := payload.Canonical()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(kind + "\n"))
	h.Write(canon)
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// cacheTTL is how long req's result may be cached, zero for not at all.
func (s *Service) cacheTTL(e registered, req *events.WorkRequest) time.Duration {
	switch {
	case s.store == nil || req.Cache.Skip:
		return 0
	case req.Cache.TTL > 0:
		return req.Cache.TTL.Std()
	}
	return max(e.opts.CacheTTL, 0)
}

// execute runs req, through the result cache when its kind allows.
// Concurrent identical requests are collapsed: one runs, the others wait
// and take its output as a cache hit.
func (s *Service) execute(ctx context.Context, e registered, req *events.WorkRequest) run {
	ttl := s.cacheTTL(e, req)
	if ttl <= 0 {
		return s.runHandler(ctx, e, req)
	}
	hash, err := ResultHash(e.kind, req.Payload)
	if err != nil {
		// Not JSON: the handler will say so better than the cache can.
		return s.runHandler(ctx, e, req)
	}
	key := cache.ResultKey(e.kind, hash)

	waited := time.Now()
	leader := false
	v, _, _ := s.flight.Do(key, func() (any, error) {
		leader = true
		return s.lookupOrRun(ctx, e, req, key, ttl), nil
	})
	r := v.(run)
	switch {
	case leader:
		return r
	case r.err != nil || ctx.Err() != nil:
		// The leader failed; this item makes its own attempts.
		return s.lookupOrRun(ctx, e, req, key, ttl)
	}
	s.timings.Record(e.kind+".cache", cacheHit, time.Since(waited))
	return run{output: r.output, started: waited, cached: true}
}

// lookupOrRun answers req from the cache, or runs it and stores the
// output of a success.
func (s *Service) lookupOrRun(
	ctx context.Context, e registered, req *events.WorkRequest, key string, ttl time.Duration,
) run {
	start := time.Now()
	out, hit := s.cacheGet(ctx, key)
	status := cacheMiss
	if hit {
		status = cacheHit
	}
	s.timings.Record(e.kind+".cache", status, time.Since(start))
	if hit {
		return run{output: out, started: start, cached: true}
	}

	r := s.runHandler(ctx, e, req)
	if r.err == nil {
		s.cacheSet(ctx, key, r.output, ttl)
	}
	return r
}

// cacheGet reads key; a failing or unavailable cache counts as a miss.
func (s *Service) cacheGet(ctx context.Context, key string) (events.Payload, bool) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CacheTimeout)
	defer cancel()
	v, ok, err := s.store.Get(ctx, key)
	if err != nil {
		s.cacheFailed(err)
		return nil, false
	}
	return v, ok
}

// cacheSet writes key; a failure only costs a later hit.
func (s *Service) cacheSet(ctx context.Context, key string, v events.Payload, ttl time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CacheTimeout)
	defer cancel()
	if err := s.store.Set(ctx, key, v, ttl); err != nil {
		s.cacheFailed(err)
	}
}

// cacheFailed counts a cache error and warns at most every 30 s. A cache
// that a breaker holds off (cache.ErrUnavailable) is neither: the breaker
// has seen the errors already and its owner reports its state.
func (s *Service) cacheFailed(err error) {
	if errors.Is(err, cache.ErrUnavailable) {
		return
	}
	n := s.cacheErrors.Add(1)
	s.cacheWarn.Do(func() {
		s.log.Warn("result cache failing, running uncached; check the cache server",
			"store", s.store.Name(), "cache_errors_total", n, "err", err)
	})
}
