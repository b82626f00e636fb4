package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in a Redis server, or in Sentinel or Cluster through
// go-redis' universal client.
type Redis struct {
	client redis.UniversalClient
}

// NewRedis connects to the server at url (redis://[:password@]host:port/db)
// and checks it answers.
func NewRedis(ctx context.Context, url string) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
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
