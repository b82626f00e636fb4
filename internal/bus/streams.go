package bus

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// DedupWindow is how long a stream remembers Nats-Msg-Id values: the same
// request ID published twice within it is stored once.
const DedupWindow = 2 * time.Minute

// FinalsPerGroup is how many final snapshots the snapshots stream keeps per
// group: a day of one-minute windows.
const FinalsPerGroup = 24 * 60

// FinalsDedupWindow is how long the snapshots stream remembers the id of a
// final snapshot; an aggregator restarted within it publishes no window
// twice.
const FinalsDedupWindow = 15 * time.Minute

// StreamConfigs returns the configuration of every perfpipe stream.
func StreamConfigs() []jetstream.StreamConfig {
	work := func(name, subject string, maxAge time.Duration) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:       name,
			Subjects:   []string{subject},
			Retention:  jetstream.LimitsPolicy,
			Storage:    jetstream.FileStorage,
			MaxAge:     maxAge,
			MaxBytes:   1 << 30,
			Discard:    jetstream.DiscardOld,
			Duplicates: DedupWindow,
		}
	}
	telemetry := work(events.StreamTelemetry, events.TimingAll, 15*time.Minute)
	telemetry.Subjects = append(telemetry.Subjects, events.BatchTimingAll, events.ResourceAll)
	telemetry.Duplicates = 30 * time.Second

	// Final snapshots: one per group and closed window, de-duplicated by
	// group and window end so that an aggregator restarted after
	// publishing but before its checkpoint stores each window once.
	finals := work(events.StreamSnapshots, events.FinalAll, 24*time.Hour)
	finals.MaxMsgsPerSubject = FinalsPerGroup
	finals.Duplicates = FinalsDedupWindow

	return []jetstream.StreamConfig{
		work(events.StreamWork, events.SubmitAll, 24*time.Hour),
		work(events.StreamReady, events.ReadyAll, 24*time.Hour),
		work(events.StreamBatches, events.BatchAll, 24*time.Hour),
		work(events.StreamResults, events.ResultAll, 24*time.Hour),
		work(events.StreamDead, events.DeadAll, 7*24*time.Hour),
		telemetry,
		finals,
	}
}

// EnsureStreams creates the perfpipe streams, or updates them to the
// current configuration. Running it again changes nothing, and sends no
// update for a stream already as configured: an update races with
// consumers being created on the stream inside nats-server (seen with the
// race detector on 2.15.3), and services start side by side.
func (c *Conn) EnsureStreams(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	for _, cfg := range StreamConfigs() {
		if err := c.ensureStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// ensureStream creates the stream of cfg, or updates it when a field
// that cfg sets differs.
func (c *Conn) ensureStream(ctx context.Context, cfg jetstream.StreamConfig) error {
	st, err := c.JS.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return err
	case sameStream(st.CachedInfo().Config, cfg):
		return nil
	}
	_, err = c.JS.CreateOrUpdateStream(ctx, cfg)
	return err
}

// sameStream reports whether have matches want in every field that
// StreamConfigs sets. The server stores "no limit" per subject as -1.
func sameStream(have, want jetstream.StreamConfig) bool {
	if want.MaxMsgsPerSubject == 0 {
		want.MaxMsgsPerSubject = -1
	}
	return slices.Equal(have.Subjects, want.Subjects) &&
		have.Retention == want.Retention && have.Storage == want.Storage &&
		have.MaxAge == want.MaxAge && have.MaxBytes == want.MaxBytes &&
		have.Discard == want.Discard && have.Duplicates == want.Duplicates &&
		have.MaxMsgsPerSubject == want.MaxMsgsPerSubject
}

// Consumer creates or updates a durable pull consumer on stream with
// explicit acks. Fields of cfg left zero get perfpipe's defaults: an ack
// wait of 30 s and the durable's name.
func (c *Conn) Consumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Durable
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return cons, nil
}

// redact hides a password in a server URL before it is logged or wrapped
// into an error.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
