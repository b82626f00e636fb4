// Package api serves perfpipe's HTTP endpoints: /healthz for liveness and
// readiness, and /snapshots for the aggregator's latest snapshots as JSON.
//
// NewHandler builds the http.Handler; the caller owns the listener and the
// http.Server's lifecycle.
package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// SnapshotSource returns the latest snapshots whose group matches filter
// ("" for all, "service" or "service.op").
type SnapshotSource interface {
	Snapshots(filter string) []events.Snapshot
}

// Check reports the health of one component: nil when healthy.
type Check func() error

// Health is the body of /healthz.
type Health struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	Uptime string            `json:"uptime"`
}

// NewHandler returns the mux with /healthz and, when snaps is not nil,
// /snapshots (JSON, filtered by ?group=service or service.op) and /metrics
// (Prometheus exposition). A failing critical check makes /healthz answer 503; a
// failing optional one (a cache the services can work without) only marks
// the status "degraded".
func NewHandler(critical, optional map[string]Check, snaps SnapshotSource) http.Handler {
	started := time.Now()
	mux := http.NewServeMux()

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := Health{
			Status: "ok", Checks: map[string]string{},
			Uptime: time.Since(started).Round(time.Second).String(),
		}
		code := http.StatusOK
		for name, check := range optional {
			h.Checks[name] = "ok"
			if err := check(); err != nil {
				h.Checks[name], h.Status = err.Error(), "degraded"
			}
		}
		for name, check := range critical {
			h.Checks[name] = "ok"
			if err := check(); err != nil {
				h.Checks[name], h.Status = err.Error(), "unavailable"
				code = http.StatusServiceUnavailable
			}
		}
		writeJSON(w, code, h)
	})

	if snaps != nil {
		reg := prometheus.NewRegistry()
		reg.MustRegister(NewCollector(snaps))
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /snapshots", func(w http.ResponseWriter, r *http.Request) {
			list := snaps.Snapshots(r.URL.Query().Get("group"))
			for i := range list {
				list[i].Type, list[i].V = events.TypeSnapshot, events.SchemaVersion
			}
			if list == nil {
				list = []events.Snapshot{}
			}
			writeJSON(w, http.StatusOK, list)
		})
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
