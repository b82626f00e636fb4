// Package cache stores short-lived values under string keys with a TTL:
// agents' results and the aggregator's latest snapshots. Two stores share
// one small interface: Redis, when a Redis URL is configured, and a
// JetStream key-value bucket otherwise. A [Breaker] wraps a store so that
// while it is unavailable calls fail at once with [ErrUnavailable], and
// it is probed until it answers again.
//
// Keys are written as colon-separated words ("perfpipe:result:csv:ab12");
// each store maps them onto its own key syntax.
package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// KeyPrefix starts every key perfpipe writes.
const KeyPrefix = "perfpipe:"

// ResultPrefix starts every result key (see [ResultKey]). Invalidation
// ([DeleteResults]) never reaches beyond it.
const ResultPrefix = KeyPrefix + "result:"

var (
	// ErrClosed is returned by a store used after Close.
	ErrClosed = errors.New("cache: closed")

	// ErrUnavailable is returned at once by a [Breaker] that is open: the
	// store behind it failed recently and is not asked again until its
	// cool-down passes. Callers treat it as a miss.
	ErrUnavailable = errors.New("cache: unavailable")

	// ErrNotResultPattern is returned by [DeleteResults] for a pattern
	// that does not start with [ResultPrefix], so could match keys that
	// are not perfpipe's results.
	ErrNotResultPattern = errors.New("cache: pattern outside the result keys")

	// ErrNoBucket is returned by [OpenKV] when the bucket does not exist.
	ErrNoBucket = errors.New("cache: no such bucket")
)

// Entry is one key and value with its time to live.
type Entry struct {
	Key   string
	Value []byte
	TTL   time.Duration
}

// Store is a key-value cache with per-key TTLs.
type Store interface {
	// Get returns the value of key, and false when it is absent or expired.
	Get(ctx context.Context, key string) ([]byte, bool, error)
	// Set stores value under key for ttl; zero ttl means no expiry.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// SetMany stores entries in one round trip where the store allows.
	SetMany(ctx context.Context, entries []Entry) error
	// DeleteMatching deletes every key matching the glob pattern ('*' any
	// run of characters, '?' one, '[...]' a class, a backslash escapes) and
	// returns how many it deleted. Keys are walked in batches, never all
	// at once; keys written meanwhile may or may not be deleted.
	DeleteMatching(ctx context.Context, pattern string) (int, error)
	// Ping checks that the store answers, for health output.
	Ping(ctx context.Context) error
	// Name says which store this is, for logs and health output.
	Name() string
	Close() error
}

// ResultKey is the key of a cached result: kind plus a hash of the
// canonical input.
func ResultKey(kind, hash string) string {
	return ResultPrefix + kind + ":" + hash
}

// DeleteResults deletes the result keys of s that match pattern, a glob
// as in [Store.DeleteMatching]. The pattern must start with ResultPrefix
// literally, so that it can only match result keys; any other pattern is
// refused with [ErrNotResultPattern] before a key is touched.
func DeleteResults(ctx context.Context, s Store, pattern string) (int, error) {
	if !strings.HasPrefix(pattern, ResultPrefix) {
		return 0, fmt.Errorf("delete results %q: %w: want it to start with %q",
			pattern, ErrNotResultPattern, ResultPrefix)
	}
	return s.DeleteMatching(ctx, pattern)
}

// SnapshotKey is the key of a group's latest snapshot.
func SnapshotKey(service, op string) string {
	return KeyPrefix + "snapshot:" + service + ":" + op
}

// ParseSnapshotKey returns the service and op of a snapshot key.
func ParseSnapshotKey(key string) (service, op string, ok bool) {
	rest, ok := strings.CutPrefix(key, KeyPrefix+"snapshot:")
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, ":")
}
