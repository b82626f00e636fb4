package cache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
)

// fill stores n result keys of kind, numbered from 0.
func fill(t *testing.T, s cache.Store, kind string, n int) {
	t.Helper()
	entries := make([]cache.Entry, n)
	for i := range entries {
		key := cache.ResultKey(kind, fmt.Sprintf("%04d", i))
		entries[i] = cache.Entry{Key: key, Value: []byte("v"), TTL: time.Minute}
	}
	if err := s.SetMany(context.Background(), entries); err != nil {
		t.Fatalf("SetMany %d %s keys: %v", n, kind, err)
	}
}

func TestDeleteMatchingPatterns(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		want    int
	}{
		{"one kind", "perfpipe:result:csv:*", 12},
		{"any kind", "perfpipe:result:*:0001", 2},
		{"one character", "perfpipe:result:csv:000?", 10},
		{"class", "perfpipe:result:csv:000[12]", 2},
		{"prefix of another kind", "perfpipe:result:csvx*", 1},
		{"none", "perfpipe:result:sql:*", 0},
	}
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					fill(t, s, "csv", 12)
					fill(t, s, "csvx", 1)
					fill(t, s, "http", 2)
					got, err := s.DeleteMatching(context.Background(), tt.pattern)
					if err != nil || got != tt.want {
						t.Errorf("DeleteMatching(%q) = %d, %v; want %d, nil",
							tt.pattern, got, err, tt.want)
					}
				})
			}
		})
	}
}

// scanCounter counts the SCAN commands a client sends.
type scanCounter struct{ n atomic.Int64 }

func (c *scanCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *scanCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.EqualFold(cmd.Name(), "scan") {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *scanCounter) ProcessPipelineHook(
	next redis.ProcessPipelineHook,
) redis.ProcessPipelineHook {
	return next
}

func TestDeleteMatchingManyKeys(t *testing.T) {
	const n = 2500
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			scans := &scanCounter{}
			if rd, ok := s.(*cache.Redis); ok {
				rd.Client().AddHook(scans)
			}
			fill(t, s, "csv", n)
			fill(t, s, "http", 10)

			got, err := s.DeleteMatching(ctx, "perfpipe:result:csv:*")
			if err != nil || got != n {
				t.Fatalf("DeleteMatching = %d, %v; want %d, nil", got, err, n)
			}
			if _, ok := s.(*cache.Redis); ok && scans.n.Load() < 2 {
				t.Errorf("SCAN calls = %d; want more than one batch", scans.n.Load())
			}

			for _, i := range []int{0, 1, n / 2, n - 1} {
				key := cache.ResultKey("csv", fmt.Sprintf("%04d", i))
				if _, ok, err := s.Get(ctx, key); ok || err != nil {
					t.Errorf("Get %s = %v, %v; want deleted", key, ok, err)
				}
			}
			if got, err := s.DeleteMatching(ctx, "perfpipe:result:http:*"); got != 10 {
				t.Errorf("other kind left = %d, %v; want 10", got, err)
			}
		})
	}
}

func TestDeleteMatchingBadPattern(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			if _, err := s.DeleteMatching(context.Background(), ""); err == nil {
				t.Errorf("DeleteMatching(\"\") error = nil; want an error")
			}
		})
	}
}

func TestDeleteResultsScope(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		want    int
		wantErr bool
	}{
		{"every key", "*", 0, true},
		{"other application", "user:*", 0, true},
		{"snapshots", "perfpipe:snapshot:*", 0, true},
		{"perfpipe prefix only", "perfpipe:*", 0, true},
		{"result prefix as glob", "perfpipe:resul?:*", 0, true},
		{"results", "perfpipe:result:*", 3, false},
	}
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					fill(t, s, "csv", 3)
					others := []string{"user:important", cache.SnapshotKey("agent", "csv")}
					for _, k := range others {
						if err := s.Set(ctx, k, []byte("v"), time.Minute); err != nil {
							t.Fatal(err)
						}
					}
					got, err := cache.DeleteResults(ctx, s, tt.pattern)
					if got != tt.want || (err != nil) != tt.wantErr ||
						(tt.wantErr && !errors.Is(err, cache.ErrNotResultPattern)) {
						t.Errorf("DeleteResults(%q) = %d, %v; want %d, error %v",
							tt.pattern, got, err, tt.want, tt.wantErr)
					}
					for _, k := range others {
						if _, ok, err := s.Get(ctx, k); !ok || err != nil {
							t.Errorf("Get %s = %v, %v; want it kept", k, ok, err)
						}
					}
				})
			}
		})
	}
}

func TestOpenKVMissingBucket(t *testing.T) {
	ctx := context.Background()
	conn := testenv.Conn(t, testenv.NATS(t))
	if _, err := cache.OpenKV(ctx, conn.JS, "perfpipe_absent"); !errors.Is(err, cache.ErrNoBucket) {
		t.Fatalf("OpenKV(missing) error = %v; want ErrNoBucket", err)
	}
	if _, err := conn.JS.KeyValue(ctx, "perfpipe_absent"); err == nil {
		t.Error("OpenKV created the missing bucket")
	}
	if _, err := cache.NewKV(ctx, conn.JS, "perfpipe_present"); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.OpenKV(ctx, conn.JS, "perfpipe_present"); err != nil {
		t.Errorf("OpenKV(existing) = %v; want nil", err)
	}
}
