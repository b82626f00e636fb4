package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/perfpipe/perfpipe/pkg/events"
)

type fixedSnaps []events.Snapshot

func (f fixedSnaps) Snapshots(filter string) []events.Snapshot {
	var out []events.Snapshot
	for _, s := range f {
		if filter == "" || strings.HasPrefix(s.Service+"."+s.Op, filter) {
			out = append(out, s)
		}
	}
	return out
}

func TestOptionalCheckDegrades(t *testing.T) {
	optional := map[string]Check{"cache": func() error { return errors.New("redis down") }}
	srv := httptest.NewServer(NewHandler(nil, optional, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h Health
	_ = json.NewDecoder(resp.Body).Decode(&h)
	if resp.StatusCode != 200 || h.Status != "degraded" || h.Checks["cache"] != "redis down" {
		t.Errorf("got %d %+v, want 200 degraded with the cache error", resp.StatusCode, h)
	}
}

func TestHandler(t *testing.T) {
	snaps := fixedSnaps{
		{Service: "agent", Op: "http", Figures: events.Figures{Count: 3}},
		{Service: "batcher", Op: "batch"},
	}
	healthy := map[string]Check{"nats": func() error { return nil }}
	broken := map[string]Check{"nats": func() error { return errors.New("disconnected") }}

	tests := []struct {
		name     string
		checks   map[string]Check
		path     string
		wantCode int
		wantBody string
	}{
		{"healthy", healthy, "/healthz", 200, `"status": "ok"`},
		{"unavailable", broken, "/healthz", 503, `"nats": "disconnected"`},
		{"all snapshots", healthy, "/snapshots", 200, `"service": "batcher"`},
		{"filtered", healthy, "/snapshots?group=agent.http", 200, `"count": 3`},
		{"no match", healthy, "/snapshots?group=zzz", 200, `[]`},
		{"wrong method", healthy, "/snapshots", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(NewHandler(tt.checks, nil, snaps))
			defer srv.Close()
			method := http.MethodGet
			if tt.wantCode == 405 {
				method = http.MethodPost
			}
			req, _ := http.NewRequest(method, srv.URL+tt.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body json.RawMessage
			_ = json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantCode)
			}
			pretty, _ := json.MarshalIndent(body, "", "  ")
			if !strings.Contains(string(pretty), tt.wantBody) {
				t.Errorf("body = %s, want it to contain %s", pretty, tt.wantBody)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	p95, p99 := 12.5, 40.0
	snaps := fixedSnaps{
		{Service: "agent", Op: "http", Total: 7, Late: 2,
			Figures: events.Figures{Count: 3, Rate: 0.5, P95Ms: &p95, P99Ms: &p99}},
		{Service: "agent", Op: "idle"}, // empty window: no quantiles
	}
	srv := httptest.NewServer(NewHandler(nil, nil, snaps))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)

	for _, want := range []string{
		`perfpipe_latency_seconds{op="http",quantile="0.95",service="agent"} 0.0125`,
		`perfpipe_latency_seconds{op="http",quantile="0.99",service="agent"} 0.04`,
		`perfpipe_window_samples{op="http",service="agent"} 3`,
		`perfpipe_samples_total{op="http",service="agent"} 7`,
		`perfpipe_dropped_total{op="http",reason="late",service="agent"} 2`,
		`perfpipe_window_samples{op="idle",service="agent"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, `op="idle",quantile`) {
		t.Errorf("/metrics has quantiles for an empty window:\n%s", text)
	}
}

type countedSnaps struct{ fixedSnaps }

func (countedSnaps) Counters() map[string]int64 { return map[string]int64{"rejected": 4} }

func TestMetricsCounters(t *testing.T) {
	srv := httptest.NewServer(NewHandler(nil, nil, countedSnaps{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want := `perfpipe_aggregator_input_total{outcome="rejected"} 4`; !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s:\n%s", want, body)
	}
}
