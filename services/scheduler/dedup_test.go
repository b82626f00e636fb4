package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// TestReleasedAgainHoldsNoCredit covers a WORK message redelivered after
// its item was released (an ack lost in a crash): READY drops the second
// copy, no result will come for it, so it must not hold credit until the
// in-flight timeout.
func TestReleasedAgainHoldsNoCredit(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)

	// The earlier release of "again", before the crash.
	old := &events.WorkRequest{ID: "again", Kind: testKind}
	if err := client.Publish(context.Background(), events.ReadySubject(testKind), old, old.ID); err != nil {
		t.Fatal(err)
	}
	ready.wait(t, 1)

	svc := start(t, url, Config{MaxInFlight: 1, InFlightTimeout: time.Minute}).svc
	submit(t, client, &events.WorkRequest{ID: "again", Kind: testKind})
	submit(t, client, &events.WorkRequest{ID: "fresh", Kind: testKind})

	got := ids(requests(t, ready.wait(t, 2)))
	if got[1] != "fresh" {
		t.Errorf("ready ids = %v, want [again fresh]", got)
	}
	waitStats(t, svc, "one item in flight", func(s Stats) bool { return s.InFlight == 1 })
}
