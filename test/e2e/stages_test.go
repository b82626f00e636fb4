package e2e

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

var priceFiles = []string{"AAPL.csv", "GLD.csv", "GOOG.csv", "IBM.csv", "SPY.csv"}

const csvPayload = `{"file":%q,"group":"Date","group_prefix":4,"values":["Close","Volume"]}`

// yearStats is the independent computation: per year, mean Close and the
// nearest-rank p95 of Volume.
func yearStats(t *testing.T, path string) map[string][2]float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	closes, volumes := map[string][]float64{}, map[string][]float64{}
	for _, row := range rows[1:] {
		year := row[0][:4]
		c, _ := strconv.ParseFloat(row[4], 64)
		v, _ := strconv.ParseFloat(row[6], 64)
		closes[year] = append(closes[year], c)
		volumes[year] = append(volumes[year], v)
	}
	out := map[string][2]float64{}
	for year, cs := range closes {
		sum := 0.0
		for _, c := range cs {
			sum += c
		}
		out[year] = [2]float64{sum / float64(len(cs)), nearestRank(volumes[year], 0.95)}
	}
	return out
}

type csvOutput struct {
	Rows   int `json:"rows"`
	Groups []struct {
		Key     string `json:"key"`
		Count   int    `json:"count"`
		Columns map[string]struct {
			Mean float64 `json:"mean"`
			P95  float64 `json:"p95"`
		} `json:"columns"`
	} `json:"groups"`
}

func checkCSV(t *testing.T, conn *bus.Conn, res *results, rdb *redis.Client, dataDir string) {
	reqs := make([]*events.WorkRequest, len(priceFiles))
	for i, f := range priceFiles {
		reqs[i] = &events.WorkRequest{ID: "csv-" + f, Kind: "csv",
			Payload: events.Payload(fmt.Sprintf(csvPayload, f))}
	}
	got := res.wait(t, time.Minute, submit(t, conn, reqs...))

	for i, r := range got {
		if r.Status != events.StatusOK || r.Cached {
			t.Fatalf("%s: status %s cached %v error %q", r.ID, r.Status, r.Cached, r.Error)
		}
		var out csvOutput
		if err := json.Unmarshal(r.Output, &out); err != nil {
			t.Fatalf("%s output: %v: %s", r.ID, err, r.Output)
		}
		want := yearStats(t, filepath.Join(dataDir, priceFiles[i]))
		if len(out.Groups) != len(want) {
			t.Errorf("%s: %d year groups, want %d", r.ID, len(out.Groups), len(want))
		}
		for _, g := range out.Groups {
			w, ok := want[g.Key]
			if !ok {
				t.Errorf("%s: unexpected group %q", r.ID, g.Key)
				continue
			}
			if mean := g.Columns["Close"].Mean; math.Abs(mean-w[0]) > 1e-9*math.Abs(w[0]) {
				t.Errorf("%s %s mean Close = %v, want %v", r.ID, g.Key, mean, w[0])
			}
			if p95 := g.Columns["Volume"].P95; p95 != w[1] {
				t.Errorf("%s %s p95 Volume = %v, want %v", r.ID, g.Key, p95, w[1])
			}
		}
	}

	// An identical request again comes from the cache, and Redis holds it.
	again := &events.WorkRequest{ID: "csv-again", Kind: "csv",
		Payload: events.Payload(fmt.Sprintf(csvPayload, priceFiles[0]))}
	r := res.wait(t, time.Minute, submit(t, conn, again))[0]
	if r.Status != events.StatusOK || !r.Cached {
		t.Errorf("repeat: status %s cached %v, want ok from cache", r.Status, r.Cached)
	}
	if string(r.Output) != string(got[0].Output) {
		t.Errorf("cached output differs from the first run's")
	}
	keys, _, err := rdb.Scan(context.Background(), 0, "perfpipe:result:csv:*", 100).Result()
	if err != nil || len(keys) != len(priceFiles) {
		t.Errorf("redis csv result keys = %v (err %v), want %d", keys, err, len(priceFiles))
	}
}

func checkDelay(t *testing.T, conn *bus.Conn, res *results) {
	const delay = 2 * time.Second
	req := &events.WorkRequest{ID: "delayed", Kind: "sleep", Delay: events.Duration(delay),
		Payload: events.Payload(`{"ms":1}`)}
	start := time.Now()
	r := res.wait(t, 30*time.Second, submit(t, conn, req))[0]
	if r.Status != events.StatusOK {
		t.Fatalf("delayed: status %s error %q", r.Status, r.Error)
	}
	if early := req.Trace.Submitted.Add(delay).Sub(r.Started); early > 0 {
		t.Errorf("delayed item started %s before its time", early)
	}
	t.Logf("delayed item started %s after its due time", r.Started.Sub(req.Trace.Submitted.Add(delay)))
	if late := time.Since(start); late > delay+5*time.Second {
		t.Errorf("delayed item took %s, want about %s", late, delay)
	}
}

func checkPriority(t *testing.T, conn *bus.Conn, res *results) {
	var low, high []*events.WorkRequest
	for i := range 40 {
		low = append(low, &events.WorkRequest{ID: fmt.Sprintf("p0-%d", i), Kind: "sleep",
			Payload: events.Payload(`{"ms":50}`)})
	}
	for i := range 5 {
		high = append(high, &events.WorkRequest{ID: fmt.Sprintf("p9-%d", i), Kind: "sleep",
			Priority: 9, Payload: events.Payload(`{"ms":50}`)})
	}
	lowIDs := submit(t, conn, low...)
	highIDs := submit(t, conn, high...)
	res.wait(t, time.Minute, append(lowIDs, highIDs...))

	pos := res.position()
	lastHigh := 0
	for _, id := range highIDs {
		lastHigh = max(lastHigh, pos[id])
	}
	after := 0
	for _, id := range lowIDs {
		if pos[id] > lastHigh {
			after++
		}
	}
	t.Logf("%d of 40 earlier p0 items finished after the last p9 item", after)
	// The scheduler releases at most 8 at a time, so the p9 items wait for
	// a few p0 items in flight but not for the backlog behind them.
	if after < 20 {
		t.Errorf("only %d of 40 earlier p0 items finished after the last p9 item, want >= 20", after)
	}
}

func checkDead(t *testing.T, conn *bus.Conn, res *results) {
	ctx := context.Background()
	dead, err := conn.JS.OrderedConsumer(ctx, events.StreamDead, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.NC.Publish(events.SubmitSubject("http"), []byte("not a request {")); err != nil {
		t.Fatal(err)
	}
	if err := conn.NC.Publish(events.SubmitSubject("nope"), []byte(`{"payload":{}}`)); err != nil {
		t.Fatal(err)
	}

	reasons := map[string]string{}
	testenv.WaitFor(t, 30*time.Second, "two dead letters", func() bool {
		msg, err := dead.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err != nil {
			return false
		}
		var dl events.DeadLetter
		if err := events.Unmarshal(msg.Data(), &dl); err != nil {
			t.Errorf("undecodable dead letter: %v", err)
			return false
		}
		reasons[dl.Subject+" "+dl.Kind] = dl.Reason
		return len(reasons) >= 2
	})
	for key, reason := range reasons {
		t.Logf("dead letter %s: %s", key, reason)
	}
	if r := reasons["work.submit.http http"]; !strings.Contains(r, "undecodable") {
		t.Errorf("malformed message reason = %q, want undecodable", r)
	}
	found := false
	for key, reason := range reasons {
		if strings.HasSuffix(key, " nope") && strings.Contains(reason, "unknown kind") {
			found = true
		}
	}
	if !found {
		t.Errorf("no dead letter for kind nope with reason unknown kind: %v", reasons)
	}

	// Every service still works.
	after := &events.WorkRequest{ID: "after-dead", Kind: "sleep", Payload: events.Payload(`{"ms":1}`)}
	if r := res.wait(t, 30*time.Second, submit(t, conn, after))[0]; r.Status != events.StatusOK {
		t.Errorf("after dead letters: status %s", r.Status)
	}
}

func checkAPI(t *testing.T, addr string) {
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	code, body := get("/snapshots?group=agent.http")
	var list []events.Snapshot
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].Count == 0 {
		t.Errorf("/snapshots?group=agent.http = %d %s", code, body)
	}
}

func checkMonitor(t *testing.T, snaps *snapshots) {
	testenv.WaitFor(t, 10*time.Second, "a resource snapshot of the agent process", func() bool {
		s, _, ok := snaps.latest(t, "agent", "resource")
		return ok && s.Resource != nil && s.Resource.RSSBytes > 0
	})
}
