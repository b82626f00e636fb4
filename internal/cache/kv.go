package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
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

var _ Store = (*KV)(nil)

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

// OpenKV opens an existing bucket without creating it, for tools that
// only read or delete: a missing bucket is [ErrNoBucket].
func OpenKV(ctx context.Context, js jetstream.JetStream, bucket string) (*KV, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("kv bucket %s: %w", bucket, ErrNoBucket)
	}
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

// DeleteMatching implements Store: it lists the bucket's keys as a
// stream and deletes those matching pattern, mapped through [KVKey] with
// its wildcards kept, by [path.Match].
//
// NOTE: as in path.Match, '*' does not match '/'; perfpipe's own keys
// have no '/'.
func (s *KV) DeleteMatching(ctx context.Context, pattern string) (int, error) {
	glob := kvGlob(pattern)
	if _, err := path.Match(glob, ""); err != nil || pattern == "" {
		return 0, fmt.Errorf("kv delete matching %q: bad pattern", pattern)
	}

	// The lister's goroutine blocks on a full channel: on an early return
	// cancel it and drain what it still sends.
	ctx, cancel := context.WithCancel(ctx)
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		cancel()
		return 0, fmt.Errorf("kv list keys: %w", err)
	}
	defer func() {
		cancel()
		for range lister.Keys() {
		}
	}()

	// A key may be listed twice while the bucket is written to.
	deleted := map[string]struct{}{}
	for key := range lister.Keys() {
		if _, seen := deleted[key]; seen {
			continue
		}
		if ok, _ := path.Match(glob, key); !ok {
			continue
		}
		if err := s.kv.Delete(ctx, key); err != nil {
			return len(deleted), fmt.Errorf("kv delete %s: %w", key, err)
		}
		deleted[key] = struct{}{}
	}
	return len(deleted), ctx.Err()
}

// kvGlob maps a glob over cache keys onto one over bucket keys: the
// wildcard and escape characters stay, the rest goes through KVKey.
func kvGlob(pattern string) string {
	var b strings.Builder
	for _, r := range pattern {
		if strings.ContainsRune(`*?[]^\`, r) {
			b.WriteRune(r)
			continue
		}
		b.WriteString(KVKey(string(r)))
	}
	return b.String()
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
