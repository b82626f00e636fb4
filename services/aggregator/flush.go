package aggregator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// watermarkGrace is taken off the clock when the consumer is caught up,
// for the skew between this host and the NATS server that stamps events.
const watermarkGrace = 250 * time.Millisecond

// publishChunk bounds the finals published asynchronously at once, below
// the JetStream context's limit of pending publishes.
const publishChunk = 1000

// final is a final snapshot waiting for the stream's acknowledgement.
type final struct {
	Subject string `msgpack:"subject"`
	ID      string `msgpack:"id"`
	Data    []byte `msgpack:"data"`
}

// flushLoop flushes on every wall-clock multiple of the publish interval.
func (s *Service) flushLoop(ctx context.Context) error {
	for {
		next := time.Now().Truncate(s.cfg.PublishInterval).Add(s.cfg.PublishInterval)
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		s.flush(ctx, next)
	}
}

// flush finalizes the windows the watermark closed and publishes their
// finals, then publishes every group's partial snapshot and writes them
// all to the store in one batch.
func (s *Service) flush(ctx context.Context, at time.Time) {
	start := time.Now()
	snaps := s.table.flush(s.watermark(ctx), nanos(at), s.queueFinal)
	s.publishFinals(ctx)
	entries := s.publish(snaps)
	err := s.write(ctx, entries)
	s.setLatest(snaps)
	s.stats.flushes.Add(1)

	d := s.rec.Since("flush", start, err)
	if d > s.cfg.PublishInterval && s.warnSlow.allow() {
		s.log.Warn("flush took longer than the publish interval, widen it or cut groups",
			"took", d, "interval", s.cfg.PublishInterval, "groups", len(snaps))
	}
}

// watermark is the stream time up to which every event is applied: the
// clock, less a grace, when the consumer has nothing pending; else the
// stream time of the last event applied, as the stream stores events in
// time order. Windows final by it can take no more events.
func (s *Service) watermark(ctx context.Context) int64 {
	wm := s.appliedTs.Load()
	if s.cons == nil {
		return wm
	}
	asked := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	info, err := s.cons.Info(ctx)
	if err != nil {
		if ctx.Err() == nil && s.warnUnavailable.allow() {
			s.log.Warn("consumer info unavailable, windows stay open until nats answers",
				"consumer", s.name, "err", err)
		}
		return wm
	}
	if info.NumPending == 0 && s.appliedSeq.Load() >= info.Delivered.Stream {
		wm = max(wm, nanos(asked.Add(-watermarkGrace)))
	}
	return wm
}

// queueFinal encodes a final snapshot into the outbox. It runs under the
// group's shard lock, so that a checkpoint holding the group as finalized
// also holds the final, unless the stream already acknowledged it.
func (s *Service) queueFinal(snap events.Snapshot) {
	// Quoted names keep ("a.b", "c") and ("a", "b.c") apart.
	id := fmt.Sprintf("%s:%q.%q:%d", s.name, snap.Service, snap.Op, snap.End.UnixNano())
	data, err := events.Marshal(&snap)
	if err != nil {
		s.log.Error("final snapshot not encoded", "op", snap.Op, "err", err)
		return
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.outbox = append(s.outbox, final{
		Subject: events.FinalSubject(snap.Service, snap.Op), ID: id, Data: data,
	})
	s.finalGen.Add(1)
}

// publishFinals publishes the outbox through JetStream, a chunk at a time,
// and keeps what the stream did not acknowledge for the next flush.
func (s *Service) publishFinals(ctx context.Context) {
	s.outMu.Lock()
	pending := append([]final(nil), s.outbox...)
	s.outMu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	done := map[string]bool{}
	for i := 0; i < len(pending) && ctx.Err() == nil; i += publishChunk {
		s.publishChunk(ctx, pending[i:min(i+publishChunk, len(pending))], done)
	}
	if len(done) == 0 {
		return
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	kept := s.outbox[:0]
	for _, f := range s.outbox {
		if !done[f.ID] {
			kept = append(kept, f)
		}
	}
	s.outbox = kept
}

func (s *Service) publishChunk(ctx context.Context, finals []final, done map[string]bool) {
	acks := make([]jetstream.PubAckFuture, len(finals))
	for i, f := range finals {
		ack, err := s.conn.JS.PublishMsgAsync(finalMsg(f))
		if err != nil {
			s.publishFailed(f.Subject, err)
			continue
		}
		acks[i] = ack
	}
	for i, ack := range acks {
		if ack == nil {
			continue
		}
		select {
		case <-ack.Ok():
			done[finals[i].ID] = true
			s.stats.finals.Add(1)
		case err := <-ack.Err():
			s.publishFailed(finals[i].Subject, err)
		case <-ctx.Done():
			s.publishFailed(finals[i].Subject, ctx.Err())
			return
		}
	}
}

// finalMsg rebuilds the message of a final, headers included.
func finalMsg(f final) *nats.Msg {
	msg := nats.NewMsg(f.Subject)
	msg.Data = f.Data
	msg.Header.Set(events.HeaderType, string(events.TypeSnapshot))
	msg.Header.Set(events.HeaderSchema, strconv.Itoa(events.SchemaVersion))
	msg.Header.Set(events.HeaderContentType, events.ContentMsgpack)
	msg.Header.Set(jetstream.MsgIDHeader, f.ID)
	return msg
}

func (s *Service) publishFailed(subject string, err error) {
	n := s.stats.publishFailed.Add(1)
	if s.warnPublish.allow() {
		s.log.Warn("snapshot not published, nats may be reconnecting",
			"subject", subject, "failed_total", n, "err", err)
	}
}

// publish sends each partial snapshot on core NATS and returns the store
// entries holding the same bytes.
func (s *Service) publish(snaps []events.Snapshot) []cache.Entry {
	entries := make([]cache.Entry, 0, len(snaps))
	for i := range snaps {
		snap := &snaps[i]
		msg, err := bus.Message(events.SnapshotSubject(snap.Service, snap.Op), snap, "")
		if err == nil {
			err = s.conn.NC.PublishMsg(msg)
		}
		if err != nil {
			s.publishFailed(events.SnapshotSubject(snap.Service, snap.Op), err)
			continue
		}
		entries = append(entries, cache.Entry{
			Key:   cache.SnapshotKey(snap.Service, snap.Op),
			Value: msg.Data,
			TTL:   s.cfg.SnapshotTTL,
		})
	}
	return entries
}

// write stores entries with one SetMany.
func (s *Service) write(ctx context.Context, entries []cache.Entry) error {
	if s.store == nil || len(entries) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	if err := s.store.SetMany(ctx, entries); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil // shutting down; the final flush writes again
		}
		n := s.stats.storeFailed.Add(1)
		if s.warnStore.allow() {
			s.log.Warn("snapshots not stored, publishing on nats only until the store is back",
				"store", s.store.Name(), "failed_total", n, "err", err)
		}
		return fmt.Errorf("store snapshots: %w", err)
	}
	return nil
}
