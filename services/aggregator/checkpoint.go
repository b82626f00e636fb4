package aggregator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/perfpipe/perfpipe/internal/bus"
)

// checkpointVersion changes with the checkpoint's encoding.
const checkpointVersion = 1

// checkpoint is the state of every group after the message Seq, as kept
// in the object store: a restart restores it and consumes after Seq.
type checkpoint struct {
	V int `msgpack:"v"`
	// Layout must match the running configuration's buckets and windows.
	Layout string `msgpack:"layout"`
	Seq    uint64 `msgpack:"seq"`
	// Ts is the stream time of message Seq; FinalWM the watermark of the
	// latest flush.
	Ts      int64        `msgpack:"ts"`
	FinalWM int64        `msgpack:"final_wm"`
	Groups  []groupState `msgpack:"groups"`
	Outbox  []final      `msgpack:"outbox"`
}

type groupState struct {
	Service string        `msgpack:"service"`
	Op      string        `msgpack:"op"`
	Next    int64         `msgpack:"next"`
	Started bool          `msgpack:"started"`
	First   int64         `msgpack:"first"`
	Seen    int64         `msgpack:"seen"`
	Total   int64         `msgpack:"total"`
	Late    int64         `msgpack:"late"`
	Future  int64         `msgpack:"future"`
	Reject  int64         `msgpack:"rejected"`
	Cache   bool          `msgpack:"cache"`
	Fine    []bucketState `msgpack:"fine"`
	Rolls   []bucketState `msgpack:"rolls"`
}

type bucketState struct {
	Idx    int64  `msgpack:"idx"`
	N      int64  `msgpack:"n"`
	Errors int64  `msgpack:"errors"`
	Hits   int64  `msgpack:"hits"`
	Misses int64  `msgpack:"misses"`
	Lat    []byte `msgpack:"lat,omitempty"` // quantile.Summary binary
	Zipped bool   `msgpack:"zipped,omitempty"`
}

// layoutKey identifies the bucket layout a checkpoint is valid for.
func (c Config) layoutKey() string {
	return fmt.Sprintf("resolution=%s windows=%v", c.Resolution, c.Windows)
}

// openCheckpoints opens, or creates, the checkpoints' object store.
func (s *Service) openCheckpoints(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
	defer cancel()
	obj, err := s.conn.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      s.cfg.CheckpointBucket,
		Description: "perfpipe aggregator checkpoints",
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("checkpoint bucket %s: %w", s.cfg.CheckpointBucket, err)
	}
	s.objects = obj
	return nil
}

// restore loads the latest checkpoint. Without a usable one the service
// starts empty and its consumer replays the whole telemetry stream.
func (s *Service) restore(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
	defer cancel()
	data, err := s.objects.GetBytes(ctx, s.name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		s.log.Info("no checkpoint, replaying the telemetry stream", "checkpoint", s.name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", s.name, err)
	}
	var cp checkpoint
	if err := msgpack.Unmarshal(data, &cp); err != nil || cp.V != checkpointVersion ||
		cp.Layout != s.cfg.layoutKey() {
		s.log.Warn("checkpoint unusable, replaying the telemetry stream",
			"checkpoint", s.name, "layout", cp.Layout, "want", s.cfg.layoutKey(), "err", err)
		return nil
	}

	s.table.restore(cp.Groups)
	s.table.finalWM.Store(cp.FinalWM)
	s.outbox = cp.Outbox
	s.pos = position{seq: cp.Seq, ts: cp.Ts}
	s.appliedSeq.Store(cp.Seq)
	s.appliedTs.Store(cp.Ts)
	s.stats.checkpointSeq.Store(cp.Seq)
	s.log.Info("checkpoint restored", "checkpoint", s.name, "seq", cp.Seq,
		"groups", len(cp.Groups), "bytes", len(data))
	return nil
}

// checkpointLoop writes a checkpoint every interval.
func (s *Service) checkpointLoop(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.CheckpointInterval)
	defer tick.Stop()
	var last mark
	for {
		select {
		case <-ctx.Done():
			s.lastMark = last
			return nil
		case <-tick.C:
		}
		last = s.checkpointSince(ctx, last)
	}
}

// mark is what the latest checkpoint holds: a message and the finals
// queued so far.
type mark struct {
	seq uint64
	gen uint64
}

// checkpoint writes a checkpoint on the way out, unless nothing changed.
func (s *Service) checkpoint(ctx context.Context) {
	s.lastMark = s.checkpointSince(ctx, s.lastMark)
}

// checkpointSince writes a checkpoint when messages were applied or finals
// queued since last, then acknowledges every message it holds, and
// returns the new mark.
//
// TODO(#3): write only the groups that changed since the last checkpoint;
// each one holds every group, so its size, about 30 KiB per busy group,
// bounds how short the interval can be with many busy groups.
func (s *Service) checkpointSince(ctx context.Context, last mark) mark {
	now := mark{seq: s.appliedSeq.Load(), gen: s.finalGen.Load()}
	if s.objects == nil || now == last {
		return last
	}
	cp, msg := s.capture()
	data, err := msgpack.Marshal(cp)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
		_, err = s.objects.PutBytes(ctx, s.name, data)
		cancel()
	}
	if err != nil {
		n := s.stats.checkpointFailed.Add(1)
		if s.warnCheckpoint.allow() {
			s.log.Warn("checkpoint not written, events stay unacknowledged until one is",
				"checkpoint", s.name, "failed_total", n, "err", err)
		}
		return last
	}

	s.stats.checkpoints.Add(1)
	s.stats.checkpointSeq.Store(cp.Seq)
	if msg != nil {
		if err := msg.Ack(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			s.log.Debug("ack after checkpoint", "seq", cp.Seq, "err", err)
		}
	}
	return mark{seq: cp.Seq, gen: now.gen}
}

// capture takes the state between two messages: the groups, then the
// outbox, so that a final is never in neither.
func (s *Service) capture() (*checkpoint, jetstream.Msg) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	cp := &checkpoint{
		V: checkpointVersion, Layout: s.cfg.layoutKey(),
		Seq: s.pos.seq, Ts: s.pos.ts, FinalWM: s.table.finalWM.Load(),
		Groups: s.table.capture(),
	}
	s.outMu.Lock()
	cp.Outbox = append([]final(nil), s.outbox...)
	s.outMu.Unlock()
	return cp, s.pos.msg
}

// capture encodes every group, one shard at a time.
func (t *table) capture() []groupState {
	var out []groupState
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, g := range sh.groups {
			out = append(out, g.state())
		}
		sh.mu.Unlock()
	}
	return out
}

// restore adds the groups of a checkpoint.
func (t *table) restore(states []groupState) {
	for i := range states {
		g := restoreGroup(&states[i], &t.ly)
		sh := t.shardOf(g.key)
		sh.mu.Lock()
		sh.groups[g.key] = g
		sh.mu.Unlock()
		t.groups.Add(1)
	}
}

func (g *group) state() groupState {
	return groupState{
		Service: g.key.service, Op: g.key.op, Next: g.next, Started: g.started,
		First: g.first, Seen: g.seen, Total: g.total, Late: g.late, Future: g.future,
		Reject: g.reject, Cache: g.cache,
		Fine: bucketStates(g.fine), Rolls: bucketStates(g.rolls),
	}
}

func restoreGroup(st *groupState, ly *layout) *group {
	g := &group{
		key: groupKey{st.Service, st.Op}, next: st.Next, started: st.Started,
		first: st.First, seen: st.Seen, total: st.Total, late: st.Late, future: st.Future,
		reject: st.Reject, cache: st.Cache,
		fine: restoreBuckets(st.Fine), rolls: restoreBuckets(st.Rolls),
	}
	if g.started {
		g.views = g.longViews(ly, g.next-1)
	}
	return g
}

func bucketStates(bs []bucket) []bucketState {
	out := make([]bucketState, len(bs))
	for i := range bs {
		b := &bs[i]
		out[i] = bucketState{Idx: b.idx, N: b.n, Errors: b.errors, Hits: b.hits,
			Misses: b.misses, Lat: b.packed, Zipped: b.zipped}
		if b.lat != nil {
			out[i].Lat, _ = b.lat.MarshalBinary()
		}
	}
	return out
}

func restoreBuckets(states []bucketState) []bucket {
	out := make([]bucket, len(states))
	for i, st := range states {
		out[i] = bucket{idx: st.Idx, counts: counts{st.N, st.Errors, st.Hits, st.Misses}}
		switch {
		case st.Zipped:
			out[i].packed, out[i].zipped = st.Lat, true
		case len(st.Lat) > 0:
			out[i].packed = st.Lat
			out[i].open()
			out[i].pack()
		}
	}
	return out
}
