package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultBucket is the key-value bucket used when no Redis is configured.
const DefaultBucket = "perfpipe_cache"

// kvMaxAge bounds how long any entry lives in the bucket; a per-key TTL is
// kept in the value and checked on Get.
const kvMaxAge = 24 * time.Hour

// KV is a Store in a JetStream key-value bucket.
type KV struct {
	kv jetstream.KeyValue
}

// NewKV opens bucket, creating it when missing.
func NewKV(ctx context.Context, js jetstream.JetStream, bucket string) (*KV, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:  bucket,
		History: 1,
		TTL:     kvMaxAge,
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", bucket, err)
	}
	return &KV{kv: kv}, nil
}

// KVKey maps a cache key onto the key syntax of a bucket: colons become
// dots and any other byte outside [-/_=.a-zA-Z0-9] becomes '_'.
func KVKey(key string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == ':':
			return '.'
		case r == '-' || r == '/' || r == '_' || r == '=' || r == '.',
			r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, key)
}

// Get implements Store.
func (s *KV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	e, err := s.kv.Get(ctx, KVKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("kv get %s: %w", key, err)
	}
	v := e.Value()
	if len(v) < 8 {
		return nil, false, fmt.Errorf("kv get %s: value of %d bytes has no expiry", key, len(v))
	}
	exp := int64(binary.BigEndian.Uint64(v))
	if exp != 0 && time.Now().UnixNano() > exp {
		return nil, false, nil
	}
	return v[8:], true, nil
}

// Set implements Store.
func (s *KV) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	var exp int64
	if ttl > 0 {
		exp = time.Now().Add(ttl).UnixNano()
	}
	buf := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(buf, uint64(exp))
	copy(buf[8:], value)
	if _, err := s.kv.Put(ctx, KVKey(key), buf); err != nil {
		return fmt.Errorf("kv put %s: %w", key, err)
	}
	return nil
}

// SetMany implements Store, one put per entry.
func (s *KV) SetMany(ctx context.Context, entries []Entry) error {
	for _, e := range entries {
		if err := s.Set(ctx, e.Key, e.Value, e.TTL); err != nil {
			return err
		}
	}
	return nil
}

// Ping implements Store by reading the bucket's status.
func (s *KV) Ping(ctx context.Context) error {
	if _, err := s.kv.Status(ctx); err != nil {
		return fmt.Errorf("kv status: %w", err)
	}
	return nil
}

// Name implements Store.
func (s *KV) Name() string { return "jetstream-kv" }

// Close implements Store; the bucket belongs to the NATS connection.
func (s *KV) Close() error { return nil }
