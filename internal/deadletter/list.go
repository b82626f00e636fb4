package deadletter

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// DefaultListTimeout bounds List when the caller's context has no
// deadline.
const DefaultListTimeout = time.Minute

// ReasonUndecodable is the reason of an entry whose stream message is not
// a readable dead letter; its Data holds the raw message.
const ReasonUndecodable = "undecodable dead letter"

// Entry is one message of the dead-letter stream.
type Entry struct {
	// Seq is the stream sequence, which identifies the entry.
	Seq uint64 `json:"seq"`
	// Subject is the dead-letter subject, work.dead.<kind>.
	Subject    string            `json:"subject"`
	DeadLetter events.DeadLetter `json:"dead_letter"`
}

// List returns the dead letters that match f, oldest first. A stream
// message that does not decode is returned with ReasonUndecodable, so that
// nothing in the stream is hidden.
//
// NOTE: List reads every message from f.Since (or the start) until it has
// f.Limit matches or reaches the end; it does not wait for new ones.
func List(ctx context.Context, js jetstream.JetStream, f Filter) ([]Entry, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultListTimeout)
		defer cancel()
	}

	cons, err := js.OrderedConsumer(ctx, events.StreamDead, consumerConfig(f))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", events.StreamDead, err)
	}
	iter, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", events.StreamDead, err)
	}
	defer cleanup(js, cons, iter)

	info := cons.CachedInfo()
	if info == nil || info.NumPending == 0 {
		return nil, nil
	}
	return collect(ctx, iter, f)
}

// consumerConfig lets the server skip what f rules out by subject and
// time. A dead letter's own time is never after its stream time, so
// starting at f.Since by stream time misses none.
func consumerConfig(f Filter) jetstream.OrderedConsumerConfig {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{events.DeadAll},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second,
	}
	if f.Kind != "" {
		cfg.FilterSubjects = []string{events.DeadSubject(f.Kind)}
	}
	if !f.Since.IsZero() {
		since := f.Since
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &since
	}
	return cfg
}

// collect reads iter until nothing is pending or f.Limit entries matched.
func collect(ctx context.Context, iter jetstream.MessagesContext, f Filter) ([]Entry, error) {
	var entries []Entry
	for {
		msg, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			return entries, fmt.Errorf("list %s: %w", events.StreamDead, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return entries, fmt.Errorf("list %s: %w", events.StreamDead, err)
		}

		e := decode(msg, meta)
		if f.Match(&e.DeadLetter) {
			entries = append(entries, e)
		}
		if meta.NumPending == 0 || (f.Limit > 0 && len(entries) >= f.Limit) {
			return entries, nil
		}
	}
}

// decode turns a stream message into an entry, keeping an undecodable one
// as a dead letter that says so.
func decode(msg jetstream.Msg, meta *jetstream.MsgMetadata) Entry {
	e := Entry{Seq: meta.Sequence.Stream, Subject: msg.Subject()}
	if err := events.Unmarshal(msg.Data(), &e.DeadLetter); err != nil {
		e.DeadLetter = events.DeadLetter{
			Kind: events.LastToken(msg.Subject()), Subject: msg.Subject(),
			Reason: ReasonUndecodable, Error: err.Error(), Time: meta.Timestamp,
			Data: msg.Data(),
		}
	}
	return e
}

// cleanup stops reading and deletes the ephemeral consumer at once rather
// than leaving it to expire.
func cleanup(js jetstream.JetStream, cons jetstream.Consumer, iter jetstream.MessagesContext) {
	iter.Stop()
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// On failure the server removes it after its inactive threshold.
	_ = js.DeleteConsumer(ctx, events.StreamDead, info.Name)
}
