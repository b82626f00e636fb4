package scheduler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// testKind is the kind every test submits.
const testKind = "echo"

// waitTimeout bounds every wait for the service to act.
const waitTimeout = 10 * time.Second

// running is a Service running on its own connection.
type running struct {
	svc  *Service
	conn *bus.Conn
	// stop cancels the service and returns Run's error, or an error when
	// Run does not return within 15 s.
	stop   func() error
	killed atomic.Bool
}

// runFunc adapts a function to testenv.Runner.
type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

// start runs a Service against url; cleanup stops it.
func start(t testing.TB, url string, cfg Config) *running {
	t.Helper()
	conn := testenv.Conn(t, url)
	svc, err := New(conn, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r := &running{svc: svc, conn: conn}
	r.stop = testenv.Run(t, runFunc(func(ctx context.Context) error {
		err := svc.Run(ctx)
		if r.killed.Load() {
			return nil // whatever Run returns after kill is accepted
		}
		return err
	}), 15*time.Second)
	return r
}

// kill stops the service abruptly: its connection closes and its context
// ends at once, without draining. Whatever Run returns is accepted.
func (r *running) kill(t testing.TB) {
	t.Helper()
	r.killed.Store(true)
	r.conn.NC.Close()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// submitJSON publishes body as typed on a shell to work.submit.<kind> and
// returns its stream sequence.
func submitJSON(t testing.TB, c *bus.Conn, body string) uint64 {
	t.Helper()
	return publishRaw(t, c, events.SubmitSubject(testKind), []byte(body))
}

func publishRaw(t testing.TB, c *bus.Conn, subject string, data []byte) uint64 {
	t.Helper()
	ack, err := c.JS.Publish(context.Background(), subject, data)
	if err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	return ack.Sequence
}

// submit publishes req as msgpack with perfpipe's headers and returns its
// stream sequence.
func submit(t testing.TB, c *bus.Conn, req *events.WorkRequest) uint64 {
	t.Helper()
	msg, err := bus.Message(events.SubmitSubject(testKind), req, req.ID)
	if err != nil {
		t.Fatalf("message: %v", err)
	}
	ack, err := c.JS.PublishMsg(context.Background(), msg)
	if err != nil {
		t.Fatalf("publish %s: %v", msg.Subject, err)
	}
	return ack.Sequence
}

// finish publishes an ok result for id, as an agent would.
func finish(t testing.TB, c *bus.Conn, id string) {
	t.Helper()
	res := &events.Result{
		ID: id, Kind: testKind, Status: events.StatusOK, Finished: time.Now(),
	}
	err := c.Publish(context.Background(), events.ResultSubject(testKind), res, id)
	if err != nil {
		t.Fatalf("publish result %s: %v", id, err)
	}
}

// seen is one message observed on a stream.
type seen struct {
	subject string
	header  nats.Header
	data    []byte
	at      time.Time
}

// tail records, in order, every message of a stream on a subject.
type tail struct {
	mu   sync.Mutex
	msgs []seen
}

func follow(t testing.TB, c *bus.Conn, stream, subject string) *tail {
	t.Helper()
	ctx := context.Background()
	cons, err := c.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
	})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", stream, err)
	}
	tl := &tail{}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		tl.msgs = append(tl.msgs, seen{
			subject: m.Subject(), header: m.Headers(), data: m.Data(), at: time.Now(),
		})
	})
	if err != nil {
		t.Fatalf("consume %s: %v", stream, err)
	}
	t.Cleanup(cc.Stop)
	return tl
}

func (tl *tail) all() []seen {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]seen(nil), tl.msgs...)
}

// wait returns the first n messages once they have arrived.
func (tl *tail) wait(t testing.TB, n int) []seen {
	t.Helper()
	return tl.waitFor(t, n, waitTimeout)
}

// waitFor is wait with its own timeout.
func (tl *tail) waitFor(t testing.TB, n int, timeout time.Duration) []seen {
	t.Helper()
	testenv.WaitFor(t, timeout, "messages on the stream", func() bool {
		return len(tl.all()) >= n
	})
	return tl.all()[:n]
}

// requests decodes released work requests.
func requests(t testing.TB, msgs []seen) []events.WorkRequest {
	t.Helper()
	out := make([]events.WorkRequest, len(msgs))
	for i, m := range msgs {
		if err := events.Unmarshal(m.data, &out[i]); err != nil {
			t.Fatalf("released message %d: %v", i, err)
		}
	}
	return out
}

func ids(reqs []events.WorkRequest) []string {
	out := make([]string, len(reqs))
	for i, r := range reqs {
		out[i] = r.ID
	}
	return out
}

// waitStats waits until cond holds for the service's stats.
func waitStats(t testing.TB, svc *Service, what string, cond func(Stats) bool) {
	t.Helper()
	testenv.WaitFor(t, waitTimeout, what, func() bool { return cond(svc.Stats()) })
}

// bucketKeys lists the keys in the pending bucket.
func bucketKeys(t testing.TB, c *bus.Conn) []string {
	t.Helper()
	ctx := context.Background()
	kv, err := c.JS.KeyValue(ctx, DefaultPendingBucket)
	if err != nil {
		t.Fatalf("open bucket: %v", err)
	}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("list bucket keys: %v", err)
	}
	return keys
}
