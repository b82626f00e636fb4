package timing_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/internal/timing"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestRecorderPublishes(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := timing.NewRecorder(conn, "svc", nil)

	rec.Record("op", events.TimingOK, 3*time.Millisecond)
	rec.Since("op", time.Now().Add(-time.Second), errors.New("boom"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec.Flush(ctx)

	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamTelemetry, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []events.Timing
	for range 2 {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatalf("next timing: %v", err)
		}
		if msg.Subject() != "perf.timing.svc.op" {
			t.Errorf("subject = %q, want perf.timing.svc.op", msg.Subject())
		}
		var tm events.Timing
		if err := events.Unmarshal(msg.Data(), &tm); err != nil {
			t.Fatal(err)
		}
		got = append(got, tm)
	}
	if got[0].Duration != 3*time.Millisecond || got[0].Status != events.TimingOK {
		t.Errorf("first timing = %+v, want 3ms ok", got[0])
	}
	if got[1].Duration < time.Second || got[1].Status != events.TimingError {
		t.Errorf("second timing = %+v, want >= 1s error", got[1])
	}
	if rec.Failed() != 0 {
		t.Errorf("Failed() = %d, want 0", rec.Failed())
	}
}
