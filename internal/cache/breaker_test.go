package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
)

// transitions records a breaker's changes of state.
type transitions struct {
	mu   sync.Mutex
	list []string
}

func (tr *transitions) add(from, to cache.BreakerState, _ error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.list = append(tr.list, from.String()+">"+to.String())
}

func (tr *transitions) has(want string) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, s := range tr.list {
		if s == want {
			return true
		}
	}
	return false
}

// breakerOn returns a breaker over a Redis store of srv, with short
// cool-downs.
func breakerOn(t *testing.T, srv *testenv.RedisProcess, tr *transitions) *cache.Breaker {
	t.Helper()
	rd, err := cache.NewRedis(context.Background(), srv.URL)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	opts := cache.BreakerOptions{CoolDown: 50 * time.Millisecond,
		MaxCoolDown: 200 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond}
	if tr != nil {
		opts.OnStateChange = tr.add
	}
	b := cache.NewBreaker(rd, opts)
	t.Cleanup(func() { b.Close() })
	return b
}

// get reads key within a timeout. A stopped server costs a call the whole
// timeout (go-redis retries until then), so the test keeps it short.
func get(b *cache.Breaker, key string) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	return b.Get(ctx, key)
}

func TestBreakerOpensAndClosesByItself(t *testing.T) {
	srv := testenv.StartRedis(t)
	tr := &transitions{}
	b := breakerOn(t, srv, tr)
	key := cache.ResultKey("csv", "ab12")
	if err := b.Set(context.Background(), key, []byte("v"), time.Minute); err != nil {
		t.Fatalf("Set: %v", err)
	}

	srv.Stop()
	for i := range 3 {
		_, _, err := get(b, key)
		if err == nil || errors.Is(err, cache.ErrUnavailable) {
			t.Fatalf("Get %d with redis down: err %v; want the store's own error", i, err)
		}
	}
	if got := b.State(); got != cache.BreakerOpen {
		t.Fatalf("State after 3 failures = %s; want open", got)
	}
	start := time.Now()
	_, _, err := get(b, key)
	if !errors.Is(err, cache.ErrUnavailable) {
		t.Fatalf("Get while open: err %v; want ErrUnavailable", err)
	}
	t.Logf("short-circuited Get took %s", time.Since(start))
	if s := b.Stats(); s.Opened != 1 || s.ShortCircuited != 1 {
		t.Errorf("Stats = %+v; want opened 1, short-circuited 1", s)
	}

	// Failing probes double the cool-down up to its cap.
	testenv.WaitFor(t, 5*time.Second, "the cool-down to reach its cap", func() bool {
		_, _, err := get(b, key)
		if err != nil && !errors.Is(err, cache.ErrUnavailable) {
			t.Fatalf("Get while open: err %v; want ErrUnavailable", err)
		}
		return b.Stats().CoolDown == 200*time.Millisecond
	})
	if !tr.has("probing>open") {
		t.Errorf("transitions %v; want probing>open", tr.list)
	}

	t.Logf("opened and cool-down capped after %s", time.Since(start))
	srv.Start()
	start = time.Now()
	testenv.WaitFor(t, 10*time.Second, "the breaker to close", func() bool {
		err := b.Set(context.Background(), key, []byte("w"), time.Minute)
		return err == nil
	})
	t.Logf("closed %s after restart", time.Since(start))
	got, ok, err := get(b, key)
	if err != nil || !ok || string(got) != "w" {
		t.Errorf("Get after restart = %q, %v, %v; want w, true, nil", got, ok, err)
	}
	if s := b.Stats(); s.State != cache.BreakerClosed || s.CoolDown != 50*time.Millisecond {
		t.Errorf("Stats after restart = %+v; want closed, cool-down reset to 50ms", s)
	}
	if !tr.has("probing>closed") {
		t.Errorf("transitions %v; want probing>closed", tr.list)
	}
}

func TestBreakerCountsOnlyOutages(t *testing.T) {
	srv := testenv.StartRedis(t)
	b := breakerOn(t, srv, nil)
	list := cache.ResultKey("csv", "list")
	inner := b.Inner().(*cache.Redis)
	if err := inner.Client().LPush(context.Background(), list, "x").Err(); err != nil {
		t.Fatalf("lpush: %v", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		call func() error
	}{
		{"error reply", func() error {
			_, _, err := b.Get(context.Background(), list)
			return err
		}},
		{"cancelled by caller", func() error {
			_, _, err := b.Get(cancelled, cache.ResultKey("csv", "x"))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 5 {
				if err := tt.call(); err == nil || errors.Is(err, cache.ErrUnavailable) {
					t.Fatalf("call err = %v; want the store's own error", err)
				}
			}
			if got := b.State(); got != cache.BreakerClosed {
				t.Errorf("State after 5 calls = %s; want closed", got)
			}
		})
	}
}

func TestBreakerConcurrentUse(t *testing.T) {
	srv := testenv.StartRedis(t)
	b := breakerOn(t, srv, nil)
	ctx, stop := context.WithCancel(context.Background())

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := cache.ResultKey("csv", fmt.Sprintf("%d-%d", w, i%50))
				cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				_ = b.Set(cctx, key, []byte("v"), time.Minute)
				_, _, _ = b.Get(cctx, key)
				_ = b.Ping(cctx)
				_ = b.Stats()
				cancel()
			}
		})
	}

	for range 2 {
		time.Sleep(100 * time.Millisecond) // let the workers run, not a sync point
		srv.Stop()
		testenv.WaitFor(t, 10*time.Second, "the breaker to open", func() bool {
			return b.State() != cache.BreakerClosed
		})
		srv.Start()
		testenv.WaitFor(t, 10*time.Second, "the breaker to close", func() bool {
			return b.State() == cache.BreakerClosed
		})
	}
	stop()
	wg.Wait()

	if s := b.Stats(); s.Opened < 2 || s.ShortCircuited == 0 {
		t.Errorf("Stats = %+v; want opened at least twice and short-circuited calls", s)
	}
	if err := b.Set(context.Background(), "k", []byte("v"), time.Minute); err != nil {
		t.Errorf("Set after restarts: %v", err)
	}
}
