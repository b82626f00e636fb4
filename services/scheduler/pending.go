package scheduler

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// markerTTL is how long the bucket keeps the marker of a released item.
// Without it every released ID would leave a marker behind for good.
const markerTTL = time.Minute

// loadTimeout bounds reading the bucket back at start.
const loadTimeout = time.Minute

// pendingStore keeps accepted items that wait for release in a JetStream
// key-value bucket, one key per item, so that a restart loses none.
type pendingStore struct {
	kv     jetstream.KeyValue
	bucket string
	// markerTTL is zero when the server cannot expire markers.
	markerTTL time.Duration
}

// storedItem is one raw entry read back from the bucket.
type storedItem struct {
	key  string
	data []byte
}

// openPending opens bucket, creating it when missing. On a server too old
// to expire delete markers it falls back to markers that stay.
func openPending(ctx context.Context, js jetstream.JetStream,
	bucket string) (*pendingStore, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "perfpipe scheduler: accepted work waiting for release",
		History:        1,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: markerTTL,
	}
	ttl := markerTTL
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		cfg.LimitMarkerTTL, ttl = 0, 0
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("open pending bucket %s: %w", bucket, err)
	}
	return &pendingStore{kv: kv, bucket: bucket, markerTTL: ttl}, nil
}

// put stores req, msgpack-encoded, and returns its key.
func (p *pendingStore) put(ctx context.Context, req *events.WorkRequest) (string, error) {
	data, err := events.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("store pending %s: %w", req.ID, err)
	}
	key := pendingKey(req.ID)
	if req.Attempt > 1 {
		// A retry must not share the entry of an earlier attempt that
		// is still there (its release removes that entry).
		key += ".attempt" + strconv.Itoa(req.Attempt)
	}
	if _, err := p.kv.Put(ctx, key, data); err != nil {
		return "", fmt.Errorf("store pending %s: %w", req.ID, err)
	}
	return key, nil
}

// remove drops the entry under key.
func (p *pendingStore) remove(ctx context.Context, key string) error {
	var opts []jetstream.KVDeleteOpt
	if p.markerTTL > 0 {
		opts = append(opts, jetstream.PurgeTTL(p.markerTTL))
	}
	if err := p.kv.Purge(ctx, key, opts...); err != nil {
		return fmt.Errorf("remove pending %s: %w", key, err)
	}
	return nil
}

// items reads every entry of the bucket, oldest write first.
func (p *pendingStore) items(ctx context.Context) ([]storedItem, error) {
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	w, err := p.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("load pending bucket %s: %w", p.bucket, err)
	}
	defer func() { _ = w.Stop() }()

	var out []storedItem
	for {
		select {
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, fmt.Errorf("load pending bucket %s: watch closed: %w",
					p.bucket, context.Cause(ctx))
			case e == nil: // the watcher's end of the stored entries
				return out, nil
			}
			out = append(out, storedItem{key: e.Key(), data: e.Value()})
		case <-ctx.Done():
			return nil, fmt.Errorf("load pending bucket %s: %w", p.bucket, ctx.Err())
		}
	}
}

// subject is where the entry under key lives, for dead letters.
func (p *pendingStore) subject(key string) string {
	return "$KV." + p.bucket + "." + key
}

// pendingKey maps a request ID onto the key syntax of a bucket. IDs of
// letters, digits, '-', '_' and '=' are kept readable ("id.<ID>"); any
// other is hex-encoded ("hex.<hex>"), so distinct IDs never share a key.
func pendingKey(id string) string {
	if plainID(id) {
		return "id." + id
	}
	return "hex." + hex.EncodeToString([]byte(id))
}

func plainID(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c == '-' || c == '_' || c == '=',
			c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}
