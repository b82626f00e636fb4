package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// opRecur is the timing of a recurring tick: from the tick to its
// submission being stored.
const opRecur = "recur"

// recurring is one definition as the loop knows it.
type recurring struct {
	def   events.Recurring
	sched events.Schedule
	// seen is when the loop first saw the definition: the start of its
	// schedule when it has no Created time.
	seen time.Time
	// retryAt holds the definition back after a failed tick.
	retryAt time.Time
}

// lastTick is a last-fired entry of the bucket.
type lastTick struct {
	at  time.Time
	rev uint64 // 0: no entry, the next claim creates it
}

// recurrer submits the work of recurring definitions at their ticks. It
// mirrors the bucket through a watch. Instances that fire the same tick
// submit it under one message ID, which the WORK stream de-duplicates,
// and the bucket records it as fired once.
type recurrer struct {
	s     *Service
	store *RecurringStore
	defs  map[string]*recurring
	lasts map[string]lastTick
}

// runRecurring fires recurring work until ctx ends. Each definition fires
// at the ticks of its schedule after its last fired tick. Ticks missed
// while no instance ran (a stop, or restarts each shorter than the
// interval) are caught up with one submission, for the latest missed tick
// only: recurring work wants to run now, not once per missed tick.
func (s *Service) runRecurring(ctx context.Context) error {
	store, err := OpenRecurring(ctx, s.conn.JS, s.cfg.RecurringBucket)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w, err := store.kv.WatchAll(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch recurring bucket %s: %w", store.bucket, err)
	}
	defer func() { _ = w.Stop() }()

	r := &recurrer{s: s, store: store, defs: map[string]*recurring{},
		lasts: map[string]lastTick{}}
	return r.loop(ctx, w)
}

// loop applies bucket changes and fires due ticks. It fires nothing
// before the watch has delivered the stored entries, so that a restart
// sees the last fired ticks before it decides what was missed.
func (r *recurrer) loop(ctx context.Context, w jetstream.KeyWatcher) error {
	timer := time.NewTimer(idleWait)
	defer timer.Stop()
	loaded := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("watch recurring bucket %s: closed", r.store.bucket)
			}
			if e == nil {
				loaded = true
			} else {
				r.apply(e, time.Now())
			}
		case <-timer.C:
		}
		if !loaded {
			continue
		}

		r.fireDue(ctx, time.Now())
		timer.Reset(time.Until(r.nextWake()))
	}
}

// apply records one change of the bucket.
func (r *recurrer) apply(e jetstream.KeyValueEntry, now time.Time) {
	gone := e.Operation() != jetstream.KeyValuePut
	if id, ok := strings.CutPrefix(e.Key(), lastPrefix); ok {
		r.applyLast(id, e, gone)
		return
	}
	id, ok := strings.CutPrefix(e.Key(), defPrefix)
	if !ok {
		return
	}
	if gone {
		delete(r.defs, id)
		return
	}

	def, err := decodeDef(e.Value())
	if err == nil && def.ID != id {
		err = fmt.Errorf("id %q under key %s", def.ID, e.Key())
	}
	if err != nil {
		r.s.log.Warn("recurring definition ignored, put a valid one", "key", e.Key(),
			"err", err)
		delete(r.defs, id)
		return
	}
	sched, _ := def.Schedule() // Validate parsed it
	r.defs[id] = &recurring{def: *def, sched: sched, seen: now}
}

// applyLast records a last-fired tick unless the loop knows a newer one.
func (r *recurrer) applyLast(id string, e jetstream.KeyValueEntry, gone bool) {
	if e.Revision() <= r.lasts[id].rev {
		return
	}
	if gone { // a claim updates the marker's revision
		r.lasts[id] = lastTick{rev: e.Revision()}
		return
	}
	at, err := decodeLast(e.Value())
	if err != nil {
		r.s.log.Warn("last tick unreadable, counting from creation", "key", e.Key(),
			"err", err)
	}
	r.lasts[id] = lastTick{at: at, rev: e.Revision()}
}

// fireDue fires every definition whose next tick has come.
func (r *recurrer) fireDue(ctx context.Context, now time.Time) {
	for id, rc := range r.defs {
		if rc.def.Paused || now.Before(rc.retryAt) {
			continue
		}
		tick := events.LatestTick(rc.sched, r.after(id), now)
		if tick.IsZero() {
			continue
		}
		if err := r.fire(ctx, rc, tick); err != nil && ctx.Err() == nil {
			rc.retryAt = now.Add(retryDelay)
			r.s.log.Warn("recurring tick not fired, trying again", "id", id,
				"tick", tick, "retry_in", retryDelay, "err", err)
		}
	}
}

// after is the time the next tick of id must follow: its last fired tick,
// or its creation.
func (r *recurrer) after(id string) time.Time {
	if last := r.lasts[id]; !last.at.IsZero() {
		return last.at
	}
	rc := r.defs[id]
	if rc.def.Created.IsZero() {
		return rc.seen
	}
	return rc.def.Created
}

// fire submits the work of tick and then claims the tick in the bucket.
// The submission's message ID is the tick's request ID, so the WORK
// stream keeps one copy when several instances fire the same tick, or
// when an instance fires a tick again because it died between submitting
// and claiming. Claiming first would lose the tick in that case. The
// instance that loses the claim only learns the new last tick.
func (r *recurrer) fire(ctx context.Context, rc *recurring, tick time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, msgTimeout)
	defer cancel()
	id := rc.def.ID

	req := rc.def.Request(tick)
	req.Trace.Submitted = time.Now()
	err := r.s.conn.Publish(ctx, events.SubmitSubject(req.Kind), req, events.SubmitMsgID(req))
	r.s.rec.Since(opRecur, tick, err)
	if err != nil {
		return err
	}

	rev, err := r.store.claim(ctx, id, tick, r.lasts[id].rev)
	if errors.Is(err, errClaimLost) {
		r.s.log.Debug("recurring tick claimed elsewhere", "id", id, "tick", tick)
		return r.refresh(ctx, id)
	}
	if err != nil {
		// Submitted but not recorded: the retry submits the same
		// message ID, which the stream drops, and claims again.
		return err
	}
	r.lasts[id] = lastTick{at: tick, rev: rev}
	r.s.log.Debug("recurring work submitted", "id", req.ID, "kind", req.Kind,
		"late", time.Since(tick))
	return nil
}

// refresh reads the last fired tick of id from the bucket.
func (r *recurrer) refresh(ctx context.Context, id string) error {
	at, rev, err := r.store.last(ctx, id)
	if err != nil {
		return err
	}
	if rev > r.lasts[id].rev {
		r.lasts[id] = lastTick{at: at, rev: rev}
	}
	return nil
}

// nextWake is when the earliest definition fires next.
func (r *recurrer) nextWake() time.Time {
	next := time.Now().Add(idleWait)
	for id, rc := range r.defs {
		if rc.def.Paused {
			continue
		}
		t := rc.sched.Next(r.after(id))
		if t.IsZero() {
			continue // the schedule has no tick within years
		}
		if t.Before(rc.retryAt) {
			t = rc.retryAt
		}
		if t.Before(next) {
			next = t
		}
	}
	return next
}
