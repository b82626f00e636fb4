package aggregator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// pullBatch is how many events the consumer buffers at most.
const pullBatch = 1000

// ackWait is how long the server waits for an ack before redelivering;
// acks follow checkpoints, so it must exceed a few checkpoint intervals.
const ackWait = time.Minute

// consumer replaces the durable consumer with one that starts after seq,
// the last message the checkpoint holds, and acknowledges cumulatively.
// Starting over rather than resuming the old consumer spares the wait for
// the redelivery of what the previous run had pulled but not acked.
func (s *Service) consumer(ctx context.Context, seq uint64) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable: s.name, Name: s.name,
		FilterSubjects: []string{events.TimingAll, events.BatchTimingAll, events.ResourceAll},
		AckPolicy:      jetstream.AckAllPolicy,
		AckWait:        max(ackWait, 10*s.cfg.CheckpointInterval),
		MaxAckPending:  s.cfg.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	ctx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
	defer cancel()
	err := s.conn.JS.DeleteConsumer(ctx, events.StreamTelemetry, s.name)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("consumer %s: delete: %w", s.name, err)
	}
	cons, err := s.conn.JS.CreateConsumer(ctx, events.StreamTelemetry, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", s.name, err)
	}
	return cons, nil
}

// consume pulls telemetry until ctx is cancelled, then drains the buffer.
func (s *Service) consume(ctx context.Context) error {
	it, err := s.cons.Messages(jetstream.PullMaxMessages(min(pullBatch, s.cfg.MaxAckPending)))
	if err != nil {
		return fmt.Errorf("consume %s: %w", s.name, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()

	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			it.Stop()
			return fmt.Errorf("consume %s: %w", s.name, err)
		}
		s.handle(msg)
	}
}

// handle applies msg unless a previous run or delivery already did. It
// does not ack: the next checkpoint acks everything applied.
func (s *Service) handle(msg jetstream.Msg) {
	s.stats.received.Add(1)
	md, err := msg.Metadata()
	if err != nil {
		s.reject(msg.Subject(), fmt.Errorf("%w: no stream metadata: %v", events.ErrInvalid, err))
		return
	}
	seq := md.Sequence.Stream
	if seq <= s.appliedSeq.Load() {
		s.stats.skipped.Add(1)
		return
	}

	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	ts := nanos(md.Timestamp)
	s.applySafely(msg.Subject(), msg.Data(), ts)
	s.pos = position{seq: seq, ts: ts, msg: msg}
	s.appliedSeq.Store(seq)
	s.appliedTs.Store(ts)
}

// applySafely applies one message; a panic counts it as rejected, so that
// a poison message is passed over rather than redelivered forever.
func (s *Service) applySafely(subject string, data []byte, ts int64) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("telemetry handler panicked", "subject", subject, "panic", r)
			s.stats.rejected.Add(1)
		}
	}()
	if err := s.apply(subject, data, ts); err != nil {
		s.reject(subject, err)
	}
}

// apply decodes a message by its subject and records its samples; ts is
// when the stream stored it. An error means the message was unusable.
func (s *Service) apply(subject string, data []byte, ts int64) error {
	switch {
	case strings.HasPrefix(subject, events.TimingPrefix):
		var ev events.Timing
		if err := events.Unmarshal(data, &ev); err != nil {
			return err
		}
		if err := fromSubject(&ev, subject); err != nil {
			return err
		}
		return s.applyTiming(&ev, ts)
	case strings.HasPrefix(subject, events.BatchTimingPrefix):
		var ev events.TimingBatch
		if err := events.Unmarshal(data, &ev); err != nil {
			return err
		}
		return s.applyBatch(subject, &ev, ts)
	case strings.HasPrefix(subject, events.ResourcePrefix):
		var ev events.Resource
		if err := events.Unmarshal(data, &ev); err != nil {
			return err
		}
		return s.applyResource(&ev, ts)
	}
	return fmt.Errorf("%w: subject %s is not telemetry", events.ErrInvalid, subject)
}

// fromSubject fills a timing's service and op from its subject
// perf.timing.<service>.<op> when the body leaves them out, and refuses a
// body that names another group than its subject.
func fromSubject(ev *events.Timing, subject string) error {
	parts := strings.Split(strings.TrimPrefix(subject, events.TimingPrefix), ".")
	if ev.Service == "" && ev.Op == "" && len(parts) == 2 {
		ev.Service, ev.Op = parts[0], parts[1]
	}
	if want := events.TimingSubject(ev.Service, ev.Op); ev.Service != "" && ev.Op != "" &&
		want != subject {
		return fmt.Errorf("%w: timing of %s.%s published on %s, want %s",
			events.ErrInvalid, ev.Service, ev.Op, subject, want)
	}
	return nil
}

// applyTiming records one duration, or counts a negative one against its
// group.
func (s *Service) applyTiming(ev *events.Timing, ts int64) error {
	if ev.Service == "" || ev.Op == "" {
		return fmt.Errorf("%w: timing without service or op", events.ErrInvalid)
	}
	smp := sample{t: eventTime(ev.Time, ts), ts: ts, n: 1, status: ev.Status, timing: true,
		ms: float64(ev.Duration) / float64(time.Millisecond)}
	if ev.Duration < 0 {
		s.record(groupKey{ev.Service, ev.Op}, &sample{t: smp.t, ts: ts, n: 1, bad: true})
		return fmt.Errorf("%w: timing %s.%s has negative duration %s",
			events.ErrInvalid, ev.Service, ev.Op, ev.Duration)
	}
	s.record(groupKey{ev.Service, ev.Op}, &smp)
	return nil
}

// applyBatch merges each delta's summary into the bucket of the batch's
// start. A bad delta is rejected alone; the others still count.
func (s *Service) applyBatch(subject string, ev *events.TimingBatch, ts int64) error {
	if ev.Service == "" {
		return fmt.Errorf("%w: timing batch without service", events.ErrInvalid)
	}
	t := eventTime(ev.Start, ts)
	for i := range ev.Deltas {
		if err := s.applyDelta(ev.Service, &ev.Deltas[i], t, ts); err != nil {
			s.reject(subject, err)
		}
	}
	return nil
}

func (s *Service) applyDelta(service string, d *events.TimingDelta, t, ts int64) error {
	if d.Op == "" {
		return fmt.Errorf("%w: timing delta of %s without op", events.ErrInvalid, service)
	}
	k := groupKey{service, d.Op}
	if !s.table.owns(k) {
		s.stats.foreign.Add(1)
		return nil // another partition decodes it
	}
	var sum quantile.Summary
	err := sum.UnmarshalBinary(d.Summary)
	if err == nil && sum.Count() > 0 && sum.Min() < 0 {
		err = fmt.Errorf("negative duration %v ms", sum.Min())
	}
	if err != nil {
		s.record(k, &sample{t: t, ts: ts, n: 1, bad: true})
		return fmt.Errorf("%w: timing delta %s.%s: %v", events.ErrInvalid, service, d.Op, err)
	}
	if sum.Count() == 0 {
		return nil
	}
	s.record(k, &sample{t: t, ts: ts, n: sum.Count(), sum: &sum, status: d.Status, timing: true})
	return nil
}

// applyResource counts a reading in its service's resource group and in
// the hosts' group, which keep the latest readings.
func (s *Service) applyResource(ev *events.Resource, ts int64) error {
	if ev.Host == "" || ev.Service == "" {
		return fmt.Errorf("%w: resource reading without host or service", events.ErrInvalid)
	}
	for _, v := range []float64{ev.CPUPercent, ev.HostCPUPercent, ev.HostMemUsedPerc} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: resource reading %s.%s has percentage %v",
				events.ErrInvalid, ev.Host, ev.Service, v)
		}
	}
	if ev.Time.IsZero() {
		ev.Time = time.Unix(0, ts)
	}
	smp := sample{t: nanos(ev.Time), ts: ts, n: 1, res: ev}
	s.record(groupKey{ev.Service, resourceOp}, &smp)
	if ev.Service != hostsService {
		s.record(groupKey{hostsService, resourceOp}, &smp)
	}
	return nil
}

// eventTime is t, or when the producer left it out, the time the stream
// stored the message.
func eventTime(t time.Time, ts int64) int64 {
	if t.IsZero() {
		return ts
	}
	return nanos(t)
}

// record adds one sample to the table and counts what became of it.
func (s *Service) record(k groupKey, smp *sample) {
	out, overflowed := s.table.record(k, smp)
	if overflowed {
		s.stats.overflowed.Add(smp.n)
	}
	switch out {
	case applied:
		s.stats.applied.Add(smp.n)
	case late:
		s.stats.late.Add(smp.n)
	case future:
		s.stats.future.Add(smp.n)
	case foreign:
		s.stats.foreign.Add(smp.n)
	}
}

// reject counts a message or delta that cannot be used: Debug each time,
// Warn now and then with the total.
func (s *Service) reject(subject string, err error) {
	n := s.stats.rejected.Add(1)
	s.log.Debug("telemetry rejected", "subject", subject, "err", err)
	if s.warnReject.allow() {
		s.log.Warn("rejecting bad telemetry, check its producers",
			"subject", subject, "rejected_total", n, "err", err)
	}
}
