package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestAgentRunsUncachedWhileRedisIsDown(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	srv := testenv.StartRedis(t)
	rd, err := cache.NewRedis(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	store := cache.NewBreaker(rd, cache.BreakerOptions{CoolDown: 50 * time.Millisecond})
	t.Cleanup(func() { store.Close() })
	res := collect[events.Result](t, conn, events.StreamResults)
	cfg := fastRetries()
	cfg.CacheTimeout = 200 * time.Millisecond
	startAgent(t, conn, store, builtins(t, cfg), cfg)

	// One item at a time, so that each makes its own cache calls.
	seq := 0
	runOne := func() events.Result {
		seq++
		id := fmt.Sprintf("item-%d", seq)
		publishBatch(t, conn, "csv", item(id, aaplByYear))
		return waitResults(t, res, id)[id]
	}

	srv.Stop()
	for range 5 {
		if r := runOne(); r.Status != events.StatusOK || r.Cached {
			t.Fatalf("%s with redis down: status %s, cached %v, error %q; want ok, uncached",
				r.ID, r.Status, r.Cached, r.Error)
		}
	}
	if s := store.Stats(); s.State == cache.BreakerClosed || s.ShortCircuited == 0 {
		t.Errorf("breaker stats with redis down = %+v; want open, short-circuited calls", s)
	}

	srv.Start()
	testenv.WaitFor(t, waitTime, "results cached again after redis restart", func() bool {
		return runOne().Cached
	})
}
