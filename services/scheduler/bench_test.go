package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Lateness benchmark shape: latenessItems delayed items, due evenly from
// latenessFirst to latenessFirst+latenessSpread after submission, in a
// shuffled order and with mixed priorities.
const (
	latenessItems  = 10_000
	latenessFirst  = time.Second
	latenessSpread = 4 * time.Second
	// submitChunk is how many submissions are in flight at once.
	submitChunk = 1000
)

// BenchmarkLateness submits 10,000 delayed items through the WORK stream,
// follows READY, and reports how late they were released (Released minus
// due): late_p50_ms, late_p99_ms, late_max_ms, and early, the count released
// before due, which must be 0. seen_p99_ms is the same measured where a
// consumer of READY sees the release. The credit limit is off, so the
// figures are the timers' and the release path's alone. Run it with
//
//	go test -run '^$' -bench Lateness -benchtime 1x ./services/scheduler/
func BenchmarkLateness(b *testing.B) {
	var late, seen []time.Duration
	early := 0
	for range b.N {
		l, s, e := latenessRun(b)
		late, seen, early = append(late, l...), append(seen, s...), early+e
	}

	if early > 0 {
		b.Errorf("%d items released before due, want none", early)
	}
	b.ReportMetric(ms(percentile(late, 50)), "late_p50_ms")
	b.ReportMetric(ms(percentile(late, 99)), "late_p99_ms")
	b.ReportMetric(ms(percentile(late, 100)), "late_max_ms")
	b.ReportMetric(ms(percentile(seen, 99)), "seen_p99_ms")
	b.ReportMetric(float64(early), "early")
}

// latenessRun is one run on a fresh server. It returns each item's
// lateness at release and as seen on READY, and the count released early.
func latenessRun(b *testing.B) (late, seen []time.Duration, early int) {
	b.StopTimer()
	url := testenv.NATS(b)
	client := testenv.Conn(b, url)
	ready := follow(b, client, events.StreamReady, events.ReadyAll)
	run := start(b, url, Config{MaxInFlight: -1})
	b.StartTimer()

	submitDelayed(b, client, latenessItems)
	msgs := ready.waitFor(b, latenessItems, latenessFirst+latenessSpread+time.Minute)
	b.StopTimer()

	for i, req := range requests(b, msgs) {
		due := req.Due()
		l := req.Trace.Released.Sub(due)
		if l < 0 || msgs[i].at.Before(due) {
			early++
		}
		late = append(late, l)
		seen = append(seen, msgs[i].at.Sub(due))
	}
	waitStats(b, run.svc, "nothing held", func(s Stats) bool { return s.Pending == 0 })
	testenv.WaitFor(b, time.Minute, "an empty bucket", func() bool {
		return len(bucketKeys(b, client)) == 0
	})
	if err := run.stop(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	return late, seen, early
}

// submitDelayed publishes n requests whose delays are spread evenly over
// latenessSpread and whose order and priorities are shuffled.
func submitDelayed(b *testing.B, c *bus.Conn, n int) {
	b.Helper()
	rnd := rand.New(rand.NewPCG(1, 2))
	order := rnd.Perm(n)
	for from := 0; from < n; from += submitChunk {
		var acks []jetstream.PubAckFuture
		for _, i := range order[from:min(from+submitChunk, n)] {
			step := latenessSpread * time.Duration(i) / time.Duration(n)
			req := &events.WorkRequest{
				ID: fmt.Sprintf("late-%05d", i), Kind: testKind,
				Priority: rnd.IntN(events.MaxPriority + 1),
				Delay:    events.Duration(latenessFirst + step),
			}
			msg, err := bus.Message(events.SubmitSubject(testKind), req, req.ID)
			if err != nil {
				b.Fatalf("message: %v", err)
			}
			ack, err := c.JS.PublishMsgAsync(msg)
			if err != nil {
				b.Fatalf("publish %s: %v", req.ID, err)
			}
			acks = append(acks, ack)
		}
		waitAcks(b, acks)
	}
}

// waitAcks waits for every submission's ack and fails on any error.
func waitAcks(b *testing.B, acks []jetstream.PubAckFuture) {
	b.Helper()
	timeout := time.After(waitTimeout)
	for _, a := range acks {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			b.Fatalf("publish %s: %v", a.Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-timeout:
			b.Fatalf("submissions not acknowledged within %s", waitTimeout)
		}
	}
}

// percentile is the nearest-rank p-th percentile of ds; 100 is the maximum.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
