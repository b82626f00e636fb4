package api

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// CounterSource is a SnapshotSource that also counts what it did with its
// input as a whole, such as messages it could not read: counts that belong
// to no group.
type CounterSource interface {
	Counters() map[string]int64
}

// Collector exposes the latest snapshots as Prometheus metrics, labelled by
// group (service, op): the window's figures as gauges, the quantiles as
// one gauge per quantile, and the since-start totals as counters. It reads
// the source at every scrape and keeps no state of its own.
type Collector struct {
	src SnapshotSource

	count, errors, rate, latency, minLat, maxLat, meanLat *prometheus.Desc
	total, dropped, rejected, hits, misses, cpu, rss      *prometheus.Desc
	input                                                 *prometheus.Desc
}

// NewCollector returns a collector over src.
func NewCollector(src SnapshotSource) *Collector {
	group := []string{"service", "op"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("perfpipe_"+name, help, append(group, labels...), nil)
	}
	return &Collector{
		src:    src,
		count:  d("window_samples", "Samples in the snapshot window."),
		errors: d("window_errors", "Samples with status error in the window."),
		rate:   d("window_rate_per_second", "Samples per second over the window."),
		latency: d("latency_seconds", "Nearest-rank latency quantile over the window.",
			"quantile"),
		minLat:   d("latency_min_seconds", "Smallest latency in the window."),
		maxLat:   d("latency_max_seconds", "Largest latency in the window."),
		meanLat:  d("latency_mean_seconds", "Mean latency in the window."),
		total:    d("samples_total", "Samples accepted, kept across restarts by the checkpoint."),
		dropped:  d("dropped_total", "Valid samples outside every window.", "reason"),
		rejected: d("rejected_total", "Bad input: negative durations, corrupt summaries."),
		hits:     d("cache_hits", "Result-cache hits in the window."),
		misses:   d("cache_misses", "Result-cache misses in the window."),
		cpu:      d("cpu_percent", "CPU use of the group's processes; 100 is one core."),
		rss:      d("rss_bytes", "Resident memory of the group's processes."),
		input: prometheus.NewDesc("perfpipe_aggregator_input_total",
			"Telemetry the aggregator handled, by outcome (applied, rejected, late, ...).",
			[]string{"outcome"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.count, c.errors, c.rate, c.latency, c.minLat,
		c.maxLat, c.meanLat, c.total, c.dropped, c.rejected, c.hits, c.misses, c.cpu, c.rss,
		c.input} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Snapshots("") {
		c.collect(ch, &s)
	}
	if cs, ok := c.src.(CounterSource); ok {
		for outcome, n := range cs.Counters() {
			ch <- prometheus.MustNewConstMetric(c.input, prometheus.CounterValue, float64(n), outcome)
		}
	}
}

func (c *Collector) collect(ch chan<- prometheus.Metric, s *events.Snapshot) {
	g := []string{s.Service, s.Op}
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(g, extra...)...)
	}
	counter := func(d *prometheus.Desc, v int64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(g, extra...)...)
	}

	gauge(c.count, float64(s.Count))
	gauge(c.errors, float64(s.Errors))
	gauge(c.rate, s.Rate)
	counter(c.total, s.Total)
	counter(c.dropped, s.Late, "late")
	counter(c.dropped, s.Future, "future")
	counter(c.rejected, s.Rejected)

	// An empty window has no quantiles: leave them out rather than report
	// zeros or stale values.
	for _, q := range []struct {
		label string
		v     *float64
	}{{"0.5", s.P50Ms}, {"0.9", s.P90Ms}, {"0.95", s.P95Ms}, {"0.99", s.P99Ms}, {"0.999", s.P999Ms}} {
		if q.v != nil {
			gauge(c.latency, seconds(*q.v), q.label)
		}
	}
	for d, v := range map[*prometheus.Desc]*float64{
		c.minLat: s.MinMs, c.maxLat: s.MaxMs, c.meanLat: s.MeanMs,
	} {
		if v != nil {
			gauge(d, seconds(*v))
		}
	}
	if s.Cache != nil {
		gauge(c.hits, float64(s.Cache.Hits))
		gauge(c.misses, float64(s.Cache.Misses))
	}
	if r := s.Resource; r != nil {
		gauge(c.cpu, r.CPUPercent)
		gauge(c.rss, float64(r.RSSBytes))
	}
}

// seconds converts a snapshot's milliseconds to Prometheus' base unit.
func seconds(ms float64) float64 { return ms / 1000 }
