package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// endpoints of the local HTTP server: path, work time and body.
var endpoints = []struct {
	path  string
	delay time.Duration
	body  string
}{
	{"/fast", time.Millisecond, "fast body"},
	{"/mid", 5 * time.Millisecond, strings.Repeat("mid body ", 100)},
	{"/slow", 20 * time.Millisecond, strings.Repeat("slow body ", 1000)},
}

func httpServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	for _, e := range endpoints {
		mux.HandleFunc(e.path, func(w http.ResponseWriter, _ *http.Request) {
			time.Sleep(e.delay)
			_, _ = w.Write([]byte(e.body))
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// pipeline is the five services running as processes of the binary.
type pipeline struct {
	procs    []*proc
	redisURL string
	httpAddr string
}

func startPipeline(t *testing.T, natsURL, redisURL, dataDir string) *pipeline {
	t.Helper()
	port := testenv.FreePort(t)
	p := &pipeline{redisURL: redisURL, httpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	common := []string{"--nats-url", natsURL, "--log-level", "debug"}
	run := func(name string, args ...string) {
		p.procs = append(p.procs, startProc(t, name, append(append([]string{name}, common...), args...)...))
	}
	run("scheduler", "--max-in-flight", "8")
	run("batcher", "--batch-linger", "5ms")
	run("agent", "--workers", "8", "--redis-url", redisURL, "--csv-data-dir", dataDir,
		"--http-allowed-hosts", "127.0.0.1")
	run("aggregator", "--redis-url", redisURL, "--http-addr", p.httpAddr)
	run("monitor", "--interval", "500ms")
	return p
}

func (p *pipeline) checkRunning(t *testing.T) {
	t.Helper()
	for _, pr := range p.procs {
		if !pr.running() {
			t.Errorf("%s exited: %v", pr.name, pr.err)
		}
	}
}

func TestEndToEnd(t *testing.T) {
	natsURL := testenv.NATS(t)
	redisURL := testenv.Redis(t)
	web := httpServer(t)
	dataDir, _ := filepath.Abs("../../testdata/prices")

	conn := testenv.Conn(t, natsURL)
	res := followResults(t, conn)
	snaps := followSnapshots(t, conn.NC)
	p := startPipeline(t, natsURL, redisURL, dataDir)

	opts, _ := redis.ParseURL(redisURL)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })

	t.Run("http", func(t *testing.T) { checkHTTP(t, conn, res, snaps, rdb, web.URL) })
	t.Run("csv", func(t *testing.T) { checkCSV(t, conn, res, rdb, dataDir) })
	t.Run("delay", func(t *testing.T) { checkDelay(t, conn, res) })
	t.Run("priority", func(t *testing.T) { checkPriority(t, conn, res) })
	t.Run("dead letters", func(t *testing.T) { checkDead(t, conn, res) })
	t.Run("http api", func(t *testing.T) { checkAPI(t, p.httpAddr) })
	t.Run("monitor", func(t *testing.T) { checkMonitor(t, snaps) })

	if dups := res.duplicates(); len(dups) > 0 {
		t.Errorf("ids with more than one result: %v", dups)
	}
	p.checkRunning(t)
}

func checkHTTP(t *testing.T, conn *bus.Conn, res *results, snaps *snapshots, rdb *redis.Client, base string) {
	const n = 2000
	reqs := make([]*events.WorkRequest, n)
	for i := range reqs {
		e := endpoints[i%len(endpoints)]
		reqs[i] = &events.WorkRequest{
			ID: fmt.Sprintf("http-%d", i), Kind: "http",
			Payload: events.Payload(fmt.Sprintf(`{"url":%q}`, base+e.path)),
		}
	}
	got := res.wait(t, 3*time.Minute, submit(t, conn, reqs...))

	var runMs []float64
	for i, r := range got {
		e := endpoints[i%len(endpoints)]
		var out struct {
			Status int    `json:"status"`
			Size   int    `json:"size"`
			SHA256 string `json:"sha256"`
		}
		if r.Status != events.StatusOK || json.Unmarshal(r.Output, &out) != nil {
			t.Fatalf("result %s: status %s, error %q, output %s", r.ID, r.Status, r.Error, r.Output)
		}
		sum := sha256.Sum256([]byte(e.body))
		if out.Status != 200 || out.Size != len(e.body) || out.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("result %s output = %+v, want 200, %d bytes, sha256 of %s", r.ID, out,
				len(e.body), e.path)
		}
		if r.Stages.Run.Std() < e.delay {
			t.Errorf("result %s run %s, shorter than the endpoint's %s", r.ID, r.Stages.Run.Std(), e.delay)
		}
		runMs = append(runMs, float64(r.Stages.Run.Std())/1e6)
	}
	exact := nearestRank(runMs, 0.95)

	var snap events.Snapshot
	testenv.WaitFor(t, 20*time.Second, "agent.http snapshot counting 2000", func() bool {
		s, _, ok := snaps.latest(t, "agent", "http")
		snap = s
		return ok && s.Count == n && s.P95Ms != nil
	})
	p95 := *snap.P95Ms
	t.Logf("snapshot agent.http: count %d p95 %.4f ms; exact p95 of results %.4f ms",
		snap.Count, p95, exact)
	if rel := math.Abs(p95-exact) / exact; rel > 0.01 {
		t.Errorf("snapshot p95 %.4f ms, exact p95 of results %.4f ms: relative error %.4f > 1%%",
			p95, exact, rel)
	}

	// The same flush writes Redis and publishes on NATS: retry until the
	// two are read from the same flush.
	testenv.WaitFor(t, 10*time.Second, "redis snapshot equal to the NATS one", func() bool {
		_, raw, _ := snaps.latest(t, "agent", "http")
		fromRedis, err := rdb.Get(context.Background(), cache.SnapshotKey("agent", "http")).Bytes()
		if err != nil {
			return false
		}
		_, raw2, _ := snaps.latest(t, "agent", "http")
		return string(raw) == string(raw2) && string(fromRedis) == string(raw)
	})
	if ttl := rdb.TTL(context.Background(), cache.SnapshotKey("agent", "http")).Val(); ttl <= 0 {
		t.Errorf("snapshot key TTL = %s, want a positive TTL", ttl)
	}
}

func nearestRank(vals []float64, q float64) float64 {
	s := slices.Clone(vals)
	slices.Sort(s)
	return s[int(math.Ceil(q*float64(len(s))))-1]
}
