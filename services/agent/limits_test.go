package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
)

// gauge is a test kind that holds each item for a while and keeps the
// most items and payload bytes it saw running at once.
type gauge struct {
	hold time.Duration

	items, bytes       atomic.Int64
	maxItems, maxBytes atomic.Int64
}

func (g *gauge) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	raise(&g.maxItems, g.items.Add(1))
	raise(&g.maxBytes, g.bytes.Add(int64(len(req.Payload))))
	defer g.items.Add(-1)
	defer g.bytes.Add(-int64(len(req.Payload)))

	select {
	case <-time.After(g.hold):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return json.Marshal(map[string]string{"id": req.ID})
}

// raise sets m to v when v is larger.
func raise(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}

// items returns n items with IDs prefix0... and payloads of size bytes.
func items(prefix string, n, size int) ([]events.WorkRequest, []string) {
	var list []events.WorkRequest
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s%d", prefix, i)
		pad := strings.Repeat("x", max(size-len(`{"p":""}`), 0))
		list = append(list, item(id, `{"p":"`+pad+`"}`))
		ids = append(ids, id)
	}
	return list, ids
}

func TestAgentKindConcurrency(t *testing.T) {
	tests := []struct {
		name     string
		opt      int // Options.MaxConcurrent of the slow kind
		override map[string]int
		want     int // most slow items at once
		// others tells whether the fast kind must finish while slow
		// items still wait for their kind.
		others bool
	}{
		{name: "option", opt: 2, want: 2, others: true},
		{name: "config overrides option", opt: 3, override: map[string]int{"slow": 1},
			want: 1, others: true},
		{name: "zero override leaves workers", opt: 1, override: map[string]int{"slow": 0},
			want: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := testenv.Conn(t, testenv.NATS(t))
			res := collect[events.Result](t, conn, events.StreamResults)
			slow, fast := &gauge{hold: 150 * time.Millisecond}, &gauge{}
			reg := agent.NewRegistry()
			register(t, reg, "slow", slow, agent.Options{MaxConcurrent: tt.opt})
			register(t, reg, "fast", fast, agent.Options{})
			cfg := fastRetries()
			cfg.Workers = 4
			cfg.KindConcurrency = tt.override
			startAgent(t, conn, nil, reg, cfg)

			slowItems, slowIDs := items("slow", 6, 10)
			publishBatch(t, conn, "slow", slowItems...)
			fastItems, fastIDs := items("fast", 2, 10)
			publishBatch(t, conn, "fast", fastItems...)

			got := waitResults(t, res, append(slowIDs, fastIDs...)...)
			if n := slow.maxItems.Load(); n != int64(tt.want) {
				t.Errorf("most slow items at once = %d, want %d", n, tt.want)
			}
			lastSlow, lastFast := lastFinished(got, slowIDs), lastFinished(got, fastIDs)
			if tt.others && !lastFast.Before(lastSlow) {
				t.Errorf("fast items finished at %s, after the last slow one at %s; "+
					"want them not to wait behind the slow kind", lastFast, lastSlow)
			}
			waitBatchesSettled(t, conn)
		})
	}
}

func register(t *testing.T, reg *agent.Registry, kind string, h agent.Handler,
	opts agent.Options) {
	t.Helper()
	if err := reg.Register(kind, h, opts); err != nil {
		t.Fatal(err)
	}
}

// lastFinished is the latest finish time of the results of ids.
func lastFinished(got map[string]events.Result, ids []string) time.Time {
	var last time.Time
	for _, id := range ids {
		if r := got[id]; r.Finished.After(last) {
			last = r.Finished
		}
	}
	return last
}

func TestAgentInFlightBytes(t *testing.T) {
	tests := []struct {
		name  string
		limit int64
		sizes []int // of the payloads, one batch each
		want  int64 // most payload bytes running at once
	}{
		{name: "two fit", limit: 100, sizes: []int{40, 40, 40, 40, 40}, want: 80},
		{name: "larger than the cap runs alone", limit: 100, sizes: []int{250, 40, 40, 40},
			want: 250},
		{name: "no cap", limit: -1, sizes: []int{40, 40, 40, 40}, want: 160},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := testenv.Conn(t, testenv.NATS(t))
			res := collect[events.Result](t, conn, events.StreamResults)
			g := &gauge{hold: 100 * time.Millisecond}
			reg := agent.NewRegistry()
			register(t, reg, "weigh", g, agent.Options{})
			cfg := fastRetries()
			cfg.Workers = 8
			cfg.MaxInFlightBytes = tt.limit
			startAgent(t, conn, nil, reg, cfg)

			var ids []string
			for i, size := range tt.sizes {
				list, batchIDs := items(fmt.Sprintf("w%d-", i), 1, size)
				publishBatch(t, conn, "weigh", list...)
				ids = append(ids, batchIDs...)
			}

			// Every item waits its turn; none is dropped or fails.
			for id, r := range waitResults(t, res, ids...) {
				if r.Status != events.StatusOK {
					t.Errorf("%s: status %s, error %q; want ok", id, r.Status, r.Error)
				}
			}
			if got := g.maxBytes.Load(); got != tt.want {
				t.Errorf("most payload bytes at once = %d, want %d", got, tt.want)
			}
			waitBatchesSettled(t, conn)
		})
	}
}

func TestAgentAdmissionHoldsIntakeUnderLoad(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	res := collect[events.Result](t, conn, events.StreamResults)
	timings := collect[events.TimingBatch](t, conn, events.StreamTelemetry,
		events.BatchTimingSubject("agent"))
	reg := agent.NewRegistry()
	register(t, reg, "weigh", &gauge{}, agent.Options{})
	cfg := fastRetries()
	cfg.PollWait = 200 * time.Millisecond
	cfg.Admission = agent.AdmissionConfig{Host: "test-host", MaxAge: time.Minute}
	svc, err := agent.New(conn, nil, reg, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, svc, waitTime)

	publishBatch(t, conn, "weigh", item("before", `{}`))
	waitResults(t, res, "before")

	// A loaded host stops intake, and ends the pull in progress.
	publishReading(t, conn, "test-host", 95, 50)
	testenv.WaitFor(t, waitTime, "intake throttled", svc.Throttled)
	testenv.WaitFor(t, waitTime, "no pull waiting", func() bool {
		return consumerInfo(t, conn).NumWaiting == 0
	})
	publishBatch(t, conn, "weigh", item("held", `{}`))

	// Absence can only be shown over a while: several poll waits.
	for end := time.Now().Add(5 * cfg.PollWait); time.Now().Before(end); {
		info := consumerInfo(t, conn)
		if _, ran := results(t, res)["held"]; ran || info.NumPending != 1 {
			t.Fatalf("while throttled: held ran %v, batches pending %d; want not run, 1",
				ran, info.NumPending)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Readings below the low watermarks resume it.
	publishReading(t, conn, "test-host", 10, 50)
	testenv.WaitFor(t, waitTime, "intake open", func() bool { return !svc.Throttled() })
	if r := waitResults(t, res, "held")["held"]; r.Status != events.StatusOK {
		t.Errorf("held: status %s, error %q; want ok", r.Status, r.Error)
	}
	testenv.WaitFor(t, waitTime, "admission timings", func() bool {
		sums := summaries(t, timings.all())
		return sums["admission/throttled"] != nil && sums["admission/open"] != nil
	})
}

// publishReading publishes a monitor's reading of host.
func publishReading(t *testing.T, conn *bus.Conn, host string, cpu, mem float64) {
	t.Helper()
	r := &events.Resource{Host: host, Service: "monitor", Time: time.Now(),
		HostCPUPercent: cpu, HostMemUsedPerc: mem}
	if err := conn.Publish(context.Background(), events.ResourceSubject(host, "monitor"),
		r, ""); err != nil {
		t.Fatalf("publish reading: %v", err)
	}
}
