package scheduler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// burstLead is how far ahead the items of a window test are due: long
// enough for all of them to be accepted first, so that they fall due
// together and go out in one release window.
const burstLead = time.Second

// submitBurst submits reqs, all due at the same instant, and waits until
// each is held. It fails the test when accepting them took so long that
// they were due before the last one was held.
func submitBurst(t *testing.T, c *bus.Conn, svc *Service, reqs []*events.WorkRequest) {
	t.Helper()
	at := time.Now().Add(burstLead)
	for _, req := range reqs {
		req.Kind, req.NotBefore = testKind, at
		submit(t, c, req)
	}
	waitStats(t, svc, "every item held", func(s Stats) bool { return s.Pending == len(reqs) })
	if time.Now().After(at) {
		t.Fatalf("accepting %d items took over %s: they did not fall due together",
			len(reqs), burstLead)
	}
}

// TestReleaseWindowKeepsPriorityOrder releases items that fall due at the
// same instant in one window: READY holds them highest priority first,
// and among equal priorities in the order they were accepted.
func TestReleaseWindowKeepsPriorityOrder(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{MaxInFlight: -1}).svc

	rnd := rand.New(rand.NewPCG(3, 4))
	reqs := make([]*events.WorkRequest, 60)
	for i := range reqs {
		reqs[i] = &events.WorkRequest{ID: fmt.Sprintf("w%02d", i),
			Priority: rnd.IntN(events.MaxPriority + 1)}
	}
	submitBurst(t, client, svc, reqs)

	want := slices.Clone(reqs)
	slices.SortStableFunc(want, func(a, b *events.WorkRequest) int {
		return b.Priority - a.Priority
	})
	got := ids(requests(t, ready.wait(t, len(reqs))))
	if diff := cmp.Diff(idsOf(want), got); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
}

// TestReleaseWindowOneFails releases a window in which READY rejects one
// item (over the stream's message size): the others are released once,
// in order, and the rejected one is given back, keeping its bucket entry
// and no credit, until READY takes it.
func TestReleaseWindowOneFails(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	svc := start(t, url, Config{MaxInFlight: 10, InFlightTimeout: time.Minute}).svc
	setReadyMaxMsgSize(t, client, 1024)

	big := events.Payload(`{"pad":"` + strings.Repeat("x", 2048) + `"}`)
	reqs := []*events.WorkRequest{
		{ID: "p5", Priority: 5}, {ID: "p4", Priority: 4}, {ID: "big", Priority: 3, Payload: big},
		{ID: "p2", Priority: 2}, {ID: "p1", Priority: 1},
	}
	submitBurst(t, client, svc, reqs)

	got := ids(requests(t, ready.wait(t, 4)))
	if diff := cmp.Diff([]string{"p5", "p4", "p2", "p1"}, got); diff != "" {
		t.Errorf("released with one rejected (-want +got):\n%s", diff)
	}
	waitStats(t, svc, "the rejected item held, the others in flight", func(s Stats) bool {
		return s.Pending == 1 && s.InFlight == 4 && s.Released == 4
	})
	if keys := bucketKeys(t, client); !slices.Equal(keys, []string{pendingKey("big")}) {
		t.Errorf("bucket keys = %v, want only the rejected item's", keys)
	}

	setReadyMaxMsgSize(t, client, -1)
	got = ids(requests(t, ready.wait(t, 5)))
	waitStats(t, svc, "nothing held", func(s Stats) bool { return s.Pending == 0 })
	waitWorkSettled(t, client)
	if n := len(ready.all()); n != 5 || got[4] != "big" {
		t.Errorf("READY holds %d: %v, want the 4 once and then big", n, got)
	}
}

// TestReleaseWindowDuplicatesGiveCredit releases a window in which some
// items were released before (a restart after a crash between publish
// and removal): READY drops their copies, and they hold no credit.
func TestReleaseWindowDuplicatesGiveCredit(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	ready := follow(t, client, events.StreamReady, events.ReadyAll)
	for _, id := range []string{"d1", "d2"} {
		old := &events.WorkRequest{ID: id, Kind: testKind}
		err := client.Publish(context.Background(), events.ReadySubject(testKind), old, id)
		if err != nil {
			t.Fatal(err)
		}
	}
	ready.wait(t, 2)
	svc := start(t, url, Config{MaxInFlight: 10, InFlightTimeout: time.Minute}).svc

	reqs := []*events.WorkRequest{{ID: "d1"}, {ID: "f1"}, {ID: "d2"}, {ID: "f2"}}
	submitBurst(t, client, svc, reqs)

	waitStats(t, svc, "only the fresh items in flight", func(s Stats) bool {
		return s.Pending == 0 && s.InFlight == 2 && s.Released == 4
	})
	got := ids(requests(t, ready.wait(t, 4)))
	if diff := cmp.Diff([]string{"d1", "d2", "f1", "f2"}, got); diff != "" {
		t.Errorf("READY (-want +got):\n%s", diff)
	}
	testenv.WaitFor(t, waitTimeout, "the bucket entries removed", func() bool {
		return len(bucketKeys(t, client)) == 0
	})
}

// TestStopFinishesRemovals stops the scheduler right after it released a
// burst: the bucket entries queued for removal behind the releases are
// still removed before Run returns, so a restart releases nothing again.
func TestStopFinishesRemovals(t *testing.T) {
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)
	r := start(t, url, Config{MaxInFlight: -1})

	reqs := make([]*events.WorkRequest, 120)
	for i := range reqs {
		reqs[i] = &events.WorkRequest{ID: fmt.Sprintf("s%03d", i)}
	}
	submitBurst(t, client, r.svc, reqs)
	waitStats(t, r.svc, "every item released", func(s Stats) bool {
		return s.Released == int64(len(reqs))
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if keys := bucketKeys(t, client); len(keys) != 0 {
		t.Errorf("bucket holds %d keys after stop, want none", len(keys))
	}
}

// setReadyMaxMsgSize sets the largest message PERFPIPE_READY stores; -1
// means no limit.
func setReadyMaxMsgSize(t testing.TB, c *bus.Conn, size int32) {
	t.Helper()
	ctx := context.Background()
	stream, err := c.JS.Stream(ctx, events.StreamReady)
	if err != nil {
		t.Fatalf("stream %s: %v", events.StreamReady, err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgSize = size
	if _, err := c.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("update stream %s: %v", events.StreamReady, err)
	}
}

func idsOf(reqs []*events.WorkRequest) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = r.ID
	}
	return out
}
