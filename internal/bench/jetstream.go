package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeResult is the raw JetStream consume rate of this machine: the
// ceiling any one consumer of a stream works under.
type ConsumeResult struct {
	Msgs      int
	Size      int
	Seconds   float64
	PerSecond float64
}

// JetStreamConsume publishes msgs messages of size bytes into a fresh
// file-backed stream, then times one durable pull consumer reading and
// acking them all, the way `nats bench js consume` does.
func JetStreamConsume(ctx context.Context, url string, msgs, size int) (ConsumeResult, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return ConsumeResult{}, fmt.Errorf("bench connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ConsumeResult{}, err
	}

	const stream, subject = "PERFPIPE_BENCH", "perfpipe.bench"
	_ = js.DeleteStream(ctx, stream)
	defer js.DeleteStream(context.WithoutCancel(ctx), stream)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{subject}, Storage: jetstream.FileStorage,
	}); err != nil {
		return ConsumeResult{}, fmt.Errorf("bench stream: %w", err)
	}
	if err := fill(ctx, js, subject, msgs, size); err != nil {
		return ConsumeResult{}, err
	}

	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 10_000,
	})
	if err != nil {
		return ConsumeResult{}, fmt.Errorf("bench consumer: %w", err)
	}
	start := time.Now()
	if err := drain(ctx, cons, msgs); err != nil {
		return ConsumeResult{}, err
	}
	secs := time.Since(start).Seconds()
	return ConsumeResult{Msgs: msgs, Size: size, Seconds: secs, PerSecond: float64(msgs) / secs}, nil
}

func fill(ctx context.Context, js jetstream.JetStream, subject string, msgs, size int) error {
	body := make([]byte, size)
	for i := 0; i < msgs; i++ {
		if _, err := js.PublishAsync(subject, body); err != nil {
			return fmt.Errorf("bench publish: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func drain(ctx context.Context, cons jetstream.Consumer, msgs int) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return fmt.Errorf("bench consume: %w", err)
	}
	defer it.Stop()
	for got := 0; got < msgs; got++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m, err := it.Next()
		if err != nil {
			return fmt.Errorf("bench consume: %w", err)
		}
		_ = m.Ack()
	}
	return nil
}
