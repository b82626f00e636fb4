package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// binary is the perfpipe binary built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "perfpipe-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "perfpipe")
	build := exec.Command("go", "build", "-o", binary, "github.com/perfpipe/perfpipe/cmd/perfpipe")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build perfpipe:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one service process of the binary.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
	err  error
}

// startProc runs `perfpipe args...` until the test ends, and prints its
// log when the test fails.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	w := &lockedWriter{buf: p.log}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("%s did not stop within 15s of SIGINT", name)
		}
		if t.Failed() {
			t.Logf("---- %s log ----\n%s", name, w.String())
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

type lockedWriter struct {
	mu  sync.Mutex
	buf *bytes.Buffer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// results follows the results stream and keeps every result by ID,
// counting duplicates.
type results struct {
	mu    sync.Mutex
	byID  map[string]events.Result
	seen  map[string]int
	order []string
}

func followResults(t *testing.T, conn *bus.Conn) *results {
	t.Helper()
	r := &results{byID: map[string]events.Result{}, seen: map[string]int{}}
	ctx := context.Background()
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamResults, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultAll},
	})
	if err != nil {
		t.Fatalf("follow results: %v", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var res events.Result
		if err := events.Unmarshal(m.Data(), &res); err != nil {
			t.Errorf("undecodable result on %s: %v", m.Subject(), err)
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.seen[res.ID]++
		if r.seen[res.ID] == 1 {
			r.byID[res.ID] = res
			r.order = append(r.order, res.ID)
		}
	})
	if err != nil {
		t.Fatalf("consume results: %v", err)
	}
	t.Cleanup(cc.Stop)
	return r
}

// wait blocks until every id has a result and returns them in id order.
func (r *results) wait(t *testing.T, timeout time.Duration, ids []string) []events.Result {
	t.Helper()
	testenv.WaitFor(t, timeout, fmt.Sprintf("%d results", len(ids)), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, id := range ids {
			if _, ok := r.byID[id]; !ok {
				return false
			}
		}
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]events.Result, len(ids))
	for i, id := range ids {
		out[i] = r.byID[id]
	}
	return out
}

// position returns the arrival index of each id.
func (r *results) position() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	pos := make(map[string]int, len(r.order))
	for i, id := range r.order {
		pos[id] = i
	}
	return pos
}

// duplicates lists the ids that got more than one result.
func (r *results) duplicates() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id, n := range r.seen {
		if n > 1 {
			out = append(out, id+"x"+strconv.Itoa(n))
		}
	}
	return out
}

// submit publishes requests, stamping their submission time, and returns
// their ids.
func submit(t *testing.T, conn *bus.Conn, reqs ...*events.WorkRequest) []string {
	t.Helper()
	ids := make([]string, len(reqs))
	futures := make([]jetstream.PubAckFuture, len(reqs))
	for i, r := range reqs {
		r.Trace.Submitted = time.Now()
		msg, err := bus.Message(events.SubmitSubject(r.Kind), r, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if futures[i], err = conn.JS.PublishMsgAsync(msg); err != nil {
			t.Fatalf("publish %s: %v", r.ID, err)
		}
		ids[i] = r.ID
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("publish ack timed out")
		}
	}
	return ids
}

// snapshots keeps the latest snapshot per group received on NATS, with its
// raw bytes.
type snapshots struct {
	mu  sync.Mutex
	raw map[string][]byte
}

func followSnapshots(t *testing.T, nc *nats.Conn) *snapshots {
	t.Helper()
	s := &snapshots{raw: map[string][]byte{}}
	sub, err := nc.Subscribe(events.SnapshotAll, func(m *nats.Msg) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.raw[m.Subject] = bytes.Clone(m.Data)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return s
}

func (s *snapshots) latest(t *testing.T, service, op string) (events.Snapshot, []byte, bool) {
	t.Helper()
	s.mu.Lock()
	raw := s.raw[events.SnapshotSubject(service, op)]
	s.mu.Unlock()
	var snap events.Snapshot
	if raw == nil {
		return snap, nil, false
	}
	if err := events.Unmarshal(raw, &snap); err != nil {
		t.Fatalf("undecodable snapshot: %v", err)
	}
	return snap, raw, true
}
