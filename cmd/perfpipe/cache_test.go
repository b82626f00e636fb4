package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
	_ = rd.Set(ctx, "user:important", []byte("x"), 0)
	_ = rd.Set(ctx, cache.SnapshotKey("agent", "csv"), []byte("x"), time.Minute)

	var out bytes.Buffer
	args := []string{"cache", "invalidate", "--nats-url", natsURL, "--redis-url", redisURL,
		"--kind", "csv"}
	if code := run(ctx, args, &out); code != 0 || !strings.Contains(out.String(), "deleted 3 keys") {
		t.Fatalf("invalidate exited %d: %s", code, out.String())
	}
	if _, ok, _ := rd.Get(ctx, cache.ResultKey("http", "a")); !ok {
		t.Error("an http result was deleted by --kind csv")
	}

	bad := func(flags ...string) []string {
		return append([]string{"cache", "invalidate", "--nats-url", natsURL,
			"--redis-url", redisURL}, flags...)
	}
	tests := []struct {
		name string
		args []string
	}{
		{"no selector", bad()},
		{"both", bad("--kind", "a", "--pattern", "b")},
		{"no subcommand", []string{"cache"}},
		{"every key", bad("--pattern", "*")},
		{"other prefix", bad("--pattern", "user:*")},
		{"snapshots", bad("--pattern", "perfpipe:snapshot:*")},
		{"prefix without colon", bad("--pattern", "perfpipe:result*")},
		{"glob kind", bad("--kind", "*")},
		{"class kind", bad("--kind", "c[sv]")},
		{"question kind", bad("--kind", "cs?")},
		{"escape kind", bad("--kind", `c\sv`)},
		{"dotted kind", bad("--kind", "a.b")},
		{"spaced kind", bad("--kind", "a b")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := run(ctx, tt.args, &out); code != 2 {
				t.Errorf("run(%q) = %d, want 2", tt.args, code)
			}
		})
	}
	for _, key := range []string{"user:important", cache.SnapshotKey("agent", "csv"),
		cache.ResultKey("http", "a")} {
		if _, ok, _ := rd.Get(ctx, key); !ok {
			t.Errorf("key %s was deleted by a refused invalidation", key)
		}
	}
}

func TestInvalidationPatternMessage(t *testing.T) {
	_, err := invalidationPattern("", "*")
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), cache.ResultPrefix) {
		t.Errorf("invalidationPattern(\"*\") error = %v; want a usage error naming %q",
			err, cache.ResultPrefix)
	}
}

// TestCacheInvalidateKV covers the JetStream KV path: a missing bucket is
// not created, and an existing one loses only the matching results.
func TestCacheInvalidateKV(t *testing.T) {
	natsURL := testenv.NATS(t)
	conn := testenv.Conn(t, natsURL)
	ctx := context.Background()
	base := []string{"cache", "invalidate", "--nats-url", natsURL}

	var out bytes.Buffer
	if code := run(ctx, append(base, "--kind", "csv"), &out); code != 0 ||
		!strings.Contains(out.String(), "no result cache bucket") {
		t.Fatalf("invalidate without a bucket exited %d: %s", code, out.String())
	}
	if _, err := conn.JS.KeyValue(ctx, cache.DefaultBucket); !errors.Is(err,
		jetstream.ErrBucketNotFound) {
		t.Fatalf("bucket after invalidate: %v; want it not created", err)
	}

	kv, err := cache.NewKV(ctx, conn.JS, "")
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{cache.ResultKey("csv", "a"), cache.ResultKey("http", "a"),
		cache.SnapshotKey("agent", "csv"), "user:important"}
	for _, k := range keys {
		if err := kv.Set(ctx, k, []byte("x"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if code := run(ctx, append(base, "--pattern", "*"), &out); code != 2 {
		t.Errorf("--pattern '*' on KV exited %d, want 2", code)
	}
	out.Reset()
	if code := run(ctx, append(base, "--kind", "csv"), &out); code != 0 ||
		!strings.Contains(out.String(), "deleted 1 keys") {
		t.Fatalf("invalidate --kind csv on KV exited %d: %s", code, out.String())
	}
	for i, k := range keys {
		_, ok, _ := kv.Get(ctx, k)
		if want := i > 0; ok != want {
			t.Errorf("key %s present = %v, want %v", k, ok, want)
		}
	}
}
