package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in a Redis server, or in Sentinel or Cluster through
// go-redis' universal client.
type Redis struct {
	client redis.UniversalClient
}

var _ Store = (*Redis)(nil)

// NewRedis connects to the server at url (redis://[:password@]host:port/db)
// and checks it answers. A failed call is not retried unless the URL asks
// for retries (max_retries=N): the cache is an optimisation, and a retry
// only holds the work that waits for it while Redis is down.
func NewRedis(ctx context.Context, url string) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if !strings.Contains(url, "max_retries=") {
		opts.MaxRetries = -1
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redis ping %s: %w", opts.Addr, err)
	}
	return &Redis{client: client}, nil
}

// Client exposes the underlying client, for tests and tools.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, bool, error) {
	b, err := r.client.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("redis get %s: %w", key, err)
	}
	return b, true, nil
}

// Set implements Store.
func (r *Redis) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := r.client.Set(ctx, key, value, ttl).Err(); err != nil {
		return fmt.Errorf("redis set %s: %w", key, err)
	}
	return nil
}

// SetMany implements Store with one pipelined write.
func (r *Redis) SetMany(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			p.Set(ctx, e.Key, e.Value, e.TTL)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis pipeline of %d sets: %w", len(entries), err)
	}
	return nil
}

// scanBatch is the COUNT hint of each SCAN of DeleteMatching, and so
// about how many keys each UNLINK removes.
const scanBatch = 500

// DeleteMatching implements Store: it walks the keyspace with SCAN MATCH
// pattern and removes each batch found with UNLINK, which frees values
// in the background. On a Cluster client it walks every master.
func (r *Redis) DeleteMatching(ctx context.Context, pattern string) (int, error) {
	if pattern == "" {
		return 0, fmt.Errorf("redis delete matching: empty pattern")
	}
	cluster, ok := r.client.(*redis.ClusterClient)
	if !ok {
		return scanUnlink(ctx, r.client, pattern)
	}

	var total atomic.Int64
	err := cluster.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := scanUnlink(ctx, node, pattern)
		total.Add(int64(n))
		return err
	})
	return int(total.Load()), err
}

// scanUnlink deletes the keys of one server that match pattern, a batch
// at a time. Keys are unlinked one per command in a pipeline, so that a
// batch never spans hash slots.
func scanUnlink(ctx context.Context, c redis.Cmdable, pattern string) (int, error) {
	var (
		cursor  uint64
		deleted int
	)
	for {
		keys, next, err := c.Scan(ctx, cursor, pattern, scanBatch).Result()
		if err != nil {
			return deleted, fmt.Errorf("redis scan %s: %w", pattern, err)
		}

		n, err := unlink(ctx, c, keys)
		deleted += n
		if err != nil {
			return deleted, fmt.Errorf("redis unlink %s: %w", pattern, err)
		}

		if cursor = next; cursor == 0 {
			return deleted, nil
		}
	}
}

// unlink removes keys in one round trip and returns how many existed.
func unlink(ctx context.Context, c redis.Cmdable, keys []string) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Unlink(ctx, k)
		}
		return nil
	})
	n := 0
	for _, cmd := range cmds {
		if ic, ok := cmd.(*redis.IntCmd); ok {
			n += int(ic.Val())
		}
	}
	return n, err
}

// isOutage says whether err means the server could not be used, rather
// than an error reply to one command; the Breaker counts only outages.
func (r *Redis) isOutage(err error) bool {
	var reply redis.Error
	if !errors.As(err, &reply) {
		return true
	}
	return redis.IsLoadingError(err) || redis.IsClusterDownError(err) ||
		redis.IsTryAgainError(err) || redis.IsMasterDownError(err) ||
		redis.IsMaxClientsError(err)
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error { return r.client.Ping(ctx).Err() }

// Name implements Store.
func (r *Redis) Name() string { return "redis" }

// LogTo sends go-redis' own log lines (reconnect attempts and the like)
// to log at Warn, instead of the standard logger's plain lines. It sets
// go-redis' process-wide logger.
func LogTo(log *slog.Logger) { redis.SetLogger(slogPrinter{log}) }

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(ctx context.Context, format string, v ...any) {
	p.log.WarnContext(ctx, "redis client", "detail", fmt.Sprintf(format, v...))
}

// Close implements Store.
func (r *Redis) Close() error { return r.client.Close() }
