package agent_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
	"github.com/perfpipe/perfpipe/services/batcher"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

// startPipeline runs a scheduler, a batcher and an agent with reg and cfg
// on a fresh server, and returns a client connection.
func startPipeline(t *testing.T, reg *agent.Registry, cfg agent.Config) *bus.Conn {
	t.Helper()
	url := testenv.NATS(t)
	client := testenv.Conn(t, url)

	sched, err := scheduler.New(testenv.Conn(t, url), scheduler.Config{}, testenv.Logger(t))
	if err != nil {
		t.Fatalf("scheduler.New() error = %v", err)
	}
	testenv.Run(t, sched, waitTime)
	bat, err := batcher.New(testenv.Conn(t, url), batcher.Config{}, testenv.Logger(t))
	if err != nil {
		t.Fatalf("batcher.New() error = %v", err)
	}
	testenv.Run(t, bat, waitTime)
	startAgent(t, testenv.Conn(t, url), nil, reg, cfg)
	return client
}

// submitWork publishes a work request as a user would.
func submitWork(t *testing.T, conn *bus.Conn, id, kind, payload string) {
	t.Helper()
	req := &events.WorkRequest{ID: id, Kind: kind, Payload: events.Payload(payload)}
	if err := conn.Publish(context.Background(), events.SubmitSubject(kind), req, id); err != nil {
		t.Fatalf("submit %s: %v", id, err)
	}
}

// handlerRun is one run of a handler as a recorder saw it.
type handlerRun struct {
	attempt    int
	notBefore  time.Time
	released   time.Time
	start, end time.Time
}

// recorder wraps a handler and keeps its runs by request ID.
type recorder struct {
	h    agent.Handler
	mu   sync.Mutex
	runs map[string][]handlerRun
}

func newRecorder(h agent.Handler) *recorder {
	return &recorder{h: h, runs: map[string][]handlerRun{}}
}

func (r *recorder) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	start := time.Now()
	out, err := r.h.Handle(ctx, req)
	run := handlerRun{attempt: req.Attempt, notBefore: req.NotBefore,
		released: req.Trace.Released, start: start, end: time.Now()}
	r.mu.Lock()
	r.runs[req.ID] = append(r.runs[req.ID], run)
	r.mu.Unlock()
	return out, err
}

func (r *recorder) of(id string) []handlerRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]handlerRun(nil), r.runs[id]...)
}

// failOnce fails the first run of each request ID transiently.
type failOnce struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (f *failOnce) Handle(_ context.Context, req *events.WorkRequest) (events.Payload, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.seen[req.ID] {
		f.seen[req.ID] = true
		return nil, errors.New("flaky: first run fails")
	}
	return events.Payload(`{"ok":true}`), nil
}

// minBackoff is the shortest backoff p can draw after failed run n.
func minBackoff(p agent.RetryPolicy, n int) time.Duration {
	d := p.Initial << (n - 1)
	return time.Duration(float64(min(d, p.Max)) * (1 - p.Jitter))
}

func TestAgentRetriesThroughScheduler(t *testing.T) {
	policy := agent.RetryPolicy{MaxAttempts: 3, Initial: 300 * time.Millisecond,
		Max: 2 * time.Second, Jitter: 0.5}
	sleep := newRecorder(agent.SleepHandler)
	flaky := newRecorder(&failOnce{seen: map[string]bool{}})
	reg := agent.NewRegistry()
	if err := reg.Register("sleep", sleep, agent.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register("flaky", flaky, agent.Options{
		Retry: agent.RetryPolicy{Initial: 50 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	cfg := agent.Config{PollWait: time.Second,
		KindRetry: map[string]agent.RetryPolicy{"sleep": policy}}
	conn := startPipeline(t, reg, cfg)
	res := collect[events.Result](t, conn, events.StreamResults)
	dead := collect[events.DeadLetter](t, conn, events.StreamDead)

	submitWork(t, conn, "transient", "sleep", `{"ms": 1, "fail": "transient"}`)
	submitWork(t, conn, "permanent", "sleep", `{"ms": 1, "fail": "permanent"}`)
	submitWork(t, conn, "flaky-1", "flaky", `{}`)

	got := waitResults(t, res, "transient", "permanent", "flaky-1")
	dls := deadByID(t, dead, "transient", "permanent")
	tests := []struct {
		id       string
		runs     []handlerRun
		status   events.Status
		attempts int
		reason   string // of the dead letter; empty for none
	}{
		{"transient", sleep.of("transient"), events.StatusError, 3, "attempts exhausted"},
		{"permanent", sleep.of("permanent"), events.StatusError, 1, "permanent failure"},
		{"flaky-1", flaky.of("flaky-1"), events.StatusOK, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if r := got[tt.id]; r.Status != tt.status || r.Attempts != tt.attempts {
				t.Errorf("result: status %s, attempts %d, error %q; want %s, %d",
					r.Status, r.Attempts, r.Error, tt.status, tt.attempts)
			}
			if len(tt.runs) != tt.attempts {
				t.Fatalf("handler ran %d times, want %d", len(tt.runs), tt.attempts)
			}
			dl, ok := dls[tt.id]
			if ok != (tt.reason != "") || dl.Reason != tt.reason ||
				(ok && dl.Attempts != tt.attempts) {
				t.Errorf("dead letter %v: reason %q, attempts %d; want %q, %d",
					ok, dl.Reason, dl.Attempts, tt.reason, tt.attempts)
			}
		})
	}
	checkBackoffs(t, sleep.of("transient"), policy)
}

// checkBackoffs checks that each run after the first is its attempt,
// started no earlier than its NotBefore, and that NotBefore is at least
// the policy's shortest backoff after the failed run before it.
func checkBackoffs(t *testing.T, runs []handlerRun, p agent.RetryPolicy) {
	t.Helper()
	for i, r := range runs {
		if r.attempt != i+1 {
			t.Errorf("run %d saw attempt %d, want %d", i, r.attempt, i+1)
		}
		if i == 0 {
			continue
		}
		prev := runs[i-1]
		want := prev.end.Add(minBackoff(p, i))
		if r.notBefore.Before(want) || r.released.Before(r.notBefore) ||
			r.start.Before(r.notBefore) {
			t.Errorf("run %d: not before %s, released %s, started %s; want not before "+
				">= %s (the failure %s plus %s), and released and started after it", i,
				r.notBefore, r.released, r.start, want, prev.end, minBackoff(p, i))
		}
	}
}

// TestAgentRetryHoldsNoWorker runs an agent with one worker: while an item
// waits for its retry, later items of the same kind run at once.
func TestAgentRetryHoldsNoWorker(t *testing.T) {
	policy := agent.RetryPolicy{MaxAttempts: 2, Initial: 3 * time.Second, Jitter: -1}
	sleep := newRecorder(agent.SleepHandler)
	reg := agent.NewRegistry()
	if err := reg.Register("sleep", sleep, agent.Options{Retry: policy}); err != nil {
		t.Fatal(err)
	}
	conn := startPipeline(t, reg, agent.Config{Workers: 1, PollWait: time.Second})
	res := collect[events.Result](t, conn, events.StreamResults)

	submitWork(t, conn, "retried", "sleep", `{"ms": 1, "fail": "transient"}`)
	testenv.WaitFor(t, waitTime, "first run of retried", func() bool {
		return len(sleep.of("retried")) == 1
	})
	ids := []string{"next-1", "next-2", "next-3"}
	for _, id := range ids {
		submitWork(t, conn, id, "sleep", `{"ms": 1}`)
	}

	got := waitResults(t, res, append(ids, "retried")...)
	runs := sleep.of("retried")
	if len(runs) != 2 {
		t.Fatalf("retried ran %d times, want 2", len(runs))
	}
	checkBackoffs(t, runs, policy)
	for _, id := range ids {
		if r := got[id]; r.Status != events.StatusOK || !r.Finished.Before(runs[1].start) {
			t.Errorf("%s: status %s, finished %s; want ok before the retry started at %s",
				id, r.Status, r.Finished, runs[1].start)
		}
	}
}
