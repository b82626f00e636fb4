package cache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
)

// stores returns each Store implementation against a real server.
func stores(t *testing.T) map[string]cache.Store {
	t.Helper()
	ctx := context.Background()
	conn := testenv.Conn(t, testenv.NATS(t))
	kv, err := cache.NewKV(ctx, conn.JS, "")
	if err != nil {
		t.Fatalf("NewKV: %v", err)
	}
	url := testenv.Redis(t)
	rd, err := cache.NewRedis(ctx, url)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { rd.Close() })

	// The breaker gets a database of its own so the stores' keys differ.
	rd1, err := cache.NewRedis(ctx, strings.TrimSuffix(url, "/0")+"/1")
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	br := cache.NewBreaker(rd1, cache.BreakerOptions{})
	t.Cleanup(func() { br.Close() })
	return map[string]cache.Store{"kv": kv, "redis": rd, "breaker": br}
}

func TestStores(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			key := cache.ResultKey("csv", "ab12")

			if _, ok, err := s.Get(ctx, key); ok || err != nil {
				t.Fatalf("Get missing = ok %v, err %v; want false, nil", ok, err)
			}
			if err := s.Set(ctx, key, []byte("v1"), time.Minute); err != nil {
				t.Fatalf("Set: %v", err)
			}
			got, ok, err := s.Get(ctx, key)
			if err != nil || !ok || string(got) != "v1" {
				t.Fatalf("Get = %q, %v, %v; want v1, true, nil", got, ok, err)
			}

			err = s.SetMany(ctx, []cache.Entry{
				{Key: cache.SnapshotKey("agent", "http"), Value: []byte("a"), TTL: time.Minute},
				{Key: cache.SnapshotKey("agent", "csv"), Value: []byte("b"),
					TTL: 50 * time.Millisecond},
			})
			if err != nil {
				t.Fatalf("SetMany: %v", err)
			}
			got, ok, _ = s.Get(ctx, cache.SnapshotKey("agent", "http"))
			if !ok || string(got) != "a" {
				t.Errorf("Get after SetMany = %q, %v; want a, true", got, ok)
			}

			testenv.WaitFor(t, 5*time.Second, "ttl expiry", func() bool {
				_, ok, _ := s.Get(ctx, cache.SnapshotKey("agent", "csv"))
				return !ok
			})
		})
	}
}

func TestKeys(t *testing.T) {
	tests := []struct{ got, want string }{
		{cache.ResultKey("csv", "ff"), "perfpipe:result:csv:ff"},
		{cache.SnapshotKey("agent", "http"), "perfpipe:snapshot:agent:http"},
		{cache.KVKey("perfpipe:snapshot:agent:http.cache"), "perfpipe.snapshot.agent.http.cache"},
		{cache.KVKey("a b*c"), "a_b_c"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	svc, op, ok := cache.ParseSnapshotKey("perfpipe:snapshot:agent:http")
	if !ok || svc != "agent" || op != "http" {
		t.Errorf("ParseSnapshotKey = %q, %q, %v", svc, op, ok)
	}
}

func TestNewRedisRetries(t *testing.T) {
	url := testenv.Redis(t)
	tests := []struct {
		name, url string
		want      int
	}{
		{"none by default", url, 0}, // go-redis stores its -1 as 0 after setup
		{"as the url asks", url + "?max_retries=2", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd, err := cache.NewRedis(context.Background(), tt.url)
			if err != nil {
				t.Fatalf("NewRedis(%s): %v", tt.url, err)
			}
			defer rd.Close()
			client, ok := rd.Client().(*redis.Client)
			if !ok {
				t.Fatalf("client is %T, want *redis.Client", rd.Client())
			}
			if got := client.Options().MaxRetries; got != tt.want {
				t.Errorf("MaxRetries = %d, want %d", got, tt.want)
			}
		})
	}
}
