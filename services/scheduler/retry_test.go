package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// TestRetryReleasedAfterFirstAttempt covers an agent's retry: the same ID
// submitted again with the next attempt, after the first copy was
// released. It is held until its NotBefore and released with its own
// READY message ID, though the first attempt, with no result, holds the
// only credit; a second copy of the retry is absorbed.
func TestRetryReleasedAfterFirstAttempt(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{MaxInFlight: 1, InFlightTimeout: time.Minute}).svc

	submit(t, client, &events.WorkRequest{ID: "r1", Kind: testKind})
	ready.wait(t, 1)

	notBefore := time.Now().Add(300 * time.Millisecond)
	retry := &events.WorkRequest{ID: "r1", Kind: testKind, Attempt: 2, NotBefore: notBefore}
	submitAs(t, client, retry, events.SubmitMsgID(&events.WorkRequest{ID: "r1", Attempt: 2}))
	submitAs(t, client, retry, "r1.attempt2.copy")

	got := ready.wait(t, 2)
	waitStats(t, svc, "nothing held", func(s Stats) bool { return s.Pending == 0 })
	waitWorkSettled(t, client)
	if n := len(ready.all()); n != 2 {
		t.Errorf("%d messages on READY, want 2 (first attempt and one retry)", n)
	}
	for i, want := range []string{"r1", "r1.attempt2"} {
		if id := got[i].header.Get("Nats-Msg-Id"); id != want {
			t.Errorf("READY message %d id = %q, want %q", i, id, want)
		}
	}
	released := requests(t, got[1:])[0]
	if released.Attempt != 2 || released.Trace.Released.Before(notBefore) {
		t.Errorf("retry released as attempt %d at %s, want attempt 2 no earlier than %s",
			released.Attempt, released.Trace.Released, notBefore)
	}
	if st := svc.Stats(); st.Accepted != 2 {
		t.Errorf("accepted %d, want 2 (the retry's copy absorbed)", st.Accepted)
	}
}

// submitAs publishes req with msgID as its Nats-Msg-Id.
func submitAs(t testing.TB, c *bus.Conn, req *events.WorkRequest, msgID string) {
	t.Helper()
	err := c.Publish(context.Background(), events.SubmitSubject(req.Kind), req, msgID)
	if err != nil {
		t.Fatalf("submit %s: %v", msgID, err)
	}
}

// waitWorkSettled waits until the scheduler's consumer has handled every
// WORK message.
func waitWorkSettled(t testing.TB, c *bus.Conn) {
	t.Helper()
	testenv.WaitFor(t, waitTimeout, "work messages handled", func() bool {
		cons, err := c.JS.Consumer(context.Background(), events.StreamWork, DefaultDurable)
		if err != nil {
			return false
		}
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}
