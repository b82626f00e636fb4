package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Key prefixes of the recurring bucket: one definition key and one
// last-fired key per definition ID.
const (
	defPrefix  = "def."
	lastPrefix = "last."
)

// Errors of RecurringStore. Match them with errors.Is.
var (
	// ErrRecurringExists means Add found a definition with the same ID.
	ErrRecurringExists = errors.New("scheduler: recurring definition exists")
	// ErrRecurringNotFound means no definition has the ID.
	ErrRecurringNotFound = errors.New("scheduler: recurring definition not found")
)

// errClaimLost means another instance claimed the tick first.
var errClaimLost = errors.New("tick claimed by another instance")

// RecurringStore keeps recurring definitions in a JetStream key-value
// bucket: "def.<id>" holds the msgpack definition and "last.<id>" the
// last tick fired (RFC 3339), which instances advance with a
// compare-and-set so that each tick is claimed by one of them.
type RecurringStore struct {
	kv     jetstream.KeyValue
	bucket string
}

// RecurringInfo is a definition and its last fired tick (zero before the
// first).
type RecurringInfo struct {
	events.Recurring
	LastFired time.Time `json:"last_fired,omitzero"`
}

// OpenRecurring opens bucket, creating it when missing.
func OpenRecurring(ctx context.Context, js jetstream.JetStream,
	bucket string) (*RecurringStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "perfpipe scheduler: recurring work and its last fired ticks",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open recurring bucket %s: %w", bucket, err)
	}
	return &RecurringStore{kv: kv, bucket: bucket}, nil
}

// LookupRecurring opens bucket without creating it: a command that only
// reads or removes definitions should not leave an empty bucket behind.
// Its error matches jetstream.ErrBucketNotFound when bucket is missing.
func LookupRecurring(ctx context.Context, js jetstream.JetStream,
	bucket string) (*RecurringStore, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open recurring bucket %s: %w", bucket, err)
	}
	return &RecurringStore{kv: kv, bucket: bucket}, nil
}

// Add stores a new definition after checking it. It returns
// ErrRecurringExists when the ID is taken. A last-fired tick left by an
// earlier definition of the same ID is dropped, so the first tick is the
// first after def.Created.
func (s *RecurringStore) Add(ctx context.Context, def *events.Recurring) error {
	data, err := encodeDef(def)
	if err != nil {
		return err
	}
	if err := s.kv.Purge(ctx, lastPrefix+def.ID); err != nil {
		return fmt.Errorf("add recurring %s: %w", def.ID, err)
	}

	_, err = s.kv.Create(ctx, defPrefix+def.ID, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("add recurring %s: %w", def.ID, ErrRecurringExists)
	}
	if err != nil {
		return fmt.Errorf("add recurring %s: %w", def.ID, err)
	}
	return nil
}

// Put stores def after checking it, replacing a definition with its ID.
// The last fired tick is kept.
func (s *RecurringStore) Put(ctx context.Context, def *events.Recurring) error {
	data, err := encodeDef(def)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, defPrefix+def.ID, data); err != nil {
		return fmt.Errorf("put recurring %s: %w", def.ID, err)
	}
	return nil
}

// Remove drops the definition id and its last fired tick. It returns
// ErrRecurringNotFound when there is no such definition.
func (s *RecurringStore) Remove(ctx context.Context, id string) error {
	_, err := s.kv.Get(ctx, defPrefix+id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("remove recurring %s: %w", id, ErrRecurringNotFound)
	}
	if err != nil {
		return fmt.Errorf("remove recurring %s: %w", id, err)
	}

	for _, key := range []string{defPrefix + id, lastPrefix + id} {
		if err := s.kv.Purge(ctx, key); err != nil {
			return fmt.Errorf("remove recurring %s: %w", key, err)
		}
	}
	return nil
}

// List returns every definition, by ID, with its last fired tick.
// Entries that cannot be read are skipped.
func (s *RecurringStore) List(ctx context.Context) ([]RecurringInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list recurring bucket %s: %w", s.bucket, err)
	}
	defer func() { _ = w.Stop() }()

	defs := map[string]*RecurringInfo{}
	lasts := map[string]time.Time{}
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("list recurring bucket %s: watch closed", s.bucket)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("list recurring bucket %s: %w", s.bucket, ctx.Err())
		}
		if e == nil { // the end of the stored entries
			return collect(defs, lasts), nil
		}
		if id, ok := strings.CutPrefix(e.Key(), lastPrefix); ok {
			lasts[id], _ = decodeLast(e.Value())
		} else if def, err := decodeDef(e.Value()); err == nil {
			defs[def.ID] = &RecurringInfo{Recurring: *def}
		}
	}
}

// collect joins definitions and ticks, ordered by ID.
func collect(defs map[string]*RecurringInfo, lasts map[string]time.Time) []RecurringInfo {
	out := make([]RecurringInfo, 0, len(defs))
	for id, info := range defs {
		info.LastFired = lasts[id]
		out = append(out, *info)
	}
	slices.SortFunc(out, func(a, b RecurringInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// claim sets the last fired tick of id to tick if its revision is still
// rev (0: no tick yet) and returns the new revision. It returns
// errClaimLost when another instance moved it first.
func (s *RecurringStore) claim(ctx context.Context, id string, tick time.Time,
	rev uint64) (uint64, error) {
	key, val := lastPrefix+id, encodeLast(tick)
	var err error
	var next uint64
	if rev == 0 {
		next, err = s.kv.Create(ctx, key, val)
	} else {
		next, err = s.kv.Update(ctx, key, val, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return 0, errClaimLost
	case err != nil:
		return 0, fmt.Errorf("claim %s at %s: %w", id, tick.Format(time.RFC3339), err)
	}
	return next, nil
}

// last reads the last fired tick of id and its revision; both are zero
// when there is none.
func (s *RecurringStore) last(ctx context.Context, id string) (time.Time, uint64, error) {
	e, err := s.kv.Get(ctx, lastPrefix+id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return time.Time{}, 0, nil
	}
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("read last tick %s: %w", id, err)
	}
	at, err := decodeLast(e.Value())
	return at, e.Revision(), err
}

func encodeDef(def *events.Recurring) ([]byte, error) {
	if err := def.Validate(); err != nil {
		return nil, err
	}
	return events.Marshal(def)
}

func decodeDef(data []byte) (*events.Recurring, error) {
	var def events.Recurring
	if err := events.Unmarshal(data, &def); err != nil {
		return nil, err
	}
	if err := def.Validate(); err != nil {
		return nil, err
	}
	return &def, nil
}

func encodeLast(t time.Time) []byte { return []byte(t.UTC().Format(time.RFC3339Nano)) }

func decodeLast(b []byte) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return time.Time{}, fmt.Errorf("last tick %q: %w", b, err)
	}
	return t, nil
}
