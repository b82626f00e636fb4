package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
)

func TestCacheInvalidate(t *testing.T) {
	natsURL := testenv.NATS(t)
	redisURL := testenv.Redis(t)
	ctx := context.Background()
	rd, err := cache.NewRedis(ctx, redisURL)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for _, k := range []string{"a", "b", "c"} {
		_ = rd.Set(ctx, cache.ResultKey("csv", k), []byte("x"), time.Minute)
	}
	_ = rd.Set(ctx, cache.ResultKey("http", "a"), []byte("x"), time.Minute)

	var out bytes.Buffer
	args := []string{"cache", "invalidate", "--nats-url", natsURL, "--redis-url", redisURL,
		"--kind", "csv"}
	if code := run(ctx, args, &out); code != 0 || !strings.Contains(out.String(), "deleted 3 keys") {
		t.Fatalf("invalidate exited %d: %s", code, out.String())
	}
	if _, ok, _ := rd.Get(ctx, cache.ResultKey("http", "a")); !ok {
		t.Error("an http result was deleted by --kind csv")
	}

	for _, bad := range [][]string{
		{"cache", "invalidate", "--nats-url", natsURL},
		{"cache", "invalidate", "--nats-url", natsURL, "--kind", "a", "--pattern", "b"},
		{"cache"},
	} {
		if code := run(ctx, bad, &out); code != 2 {
			t.Errorf("run(%q) = %d, want 2", bad, code)
		}
	}
}
