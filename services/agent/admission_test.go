package agent

import (
	"io"
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

func testAdmission(cfg AdmissionConfig) *admission {
	cfg.Host = "h1"
	return newAdmission(cfg.withDefaults(), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestAdmissionHysteresis(t *testing.T) {
	type reading struct{ cpu, mem float64 }
	tests := []struct {
		name     string
		readings []reading
		want     []bool // throttled after each reading
	}{
		{"calm", []reading{{10, 10}, {50, 70}}, []bool{false, false}},
		{"between never throttles", []reading{{85, 85}, {89, 89}, {90, 90}},
			[]bool{false, false, false}},
		{"cpu high", []reading{{95, 10}}, []bool{true}},
		{"mem high", []reading{{10, 91}}, []bool{true}},
		{"between keeps throttled", []reading{{95, 10}, {80, 10}, {89, 85}, {76, 79}},
			[]bool{true, true, true, true}},
		{"cpu must fall below low", []reading{{95, 10}, {75, 10}, {74.9, 10}},
			[]bool{true, true, false}},
		{"both must fall below low", []reading{{95, 95}, {10, 85}, {10, 79}},
			[]bool{true, true, false}},
		{"again after resuming", []reading{{95, 10}, {10, 10}, {80, 10}, {91, 10}},
			[]bool{true, false, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAdmission(AdmissionConfig{})
			var got []bool
			for _, r := range tt.readings {
				a.observe(&events.Resource{Host: "h1", HostCPUPercent: r.cpu,
					HostMemUsedPerc: r.mem}, time.Now())
				got = append(got, a.Throttled())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("throttled after %v = %v, want %v", tt.readings, got, tt.want)
			}
		})
	}
}

func TestAdmissionIgnoresOtherHostsAndStaleReadings(t *testing.T) {
	a := testAdmission(AdmissionConfig{MaxAge: time.Second})
	states := map[string]time.Duration{}
	a.record = func(state string, d time.Duration) { states[state] += d }
	t0 := time.Now()
	high := func(host string) *events.Resource {
		return &events.Resource{Host: host, HostCPUPercent: 99, HostMemUsedPerc: 99}
	}

	a.observe(high("other"), t0)
	if a.Throttled() {
		t.Fatalf("throttled by another host's reading, want open")
	}
	a.observe(high("h1"), t0)
	if left := a.expire(t0.Add(999 * time.Millisecond)); !a.Throttled() || left <= 0 {
		t.Errorf("before max age: throttled %v, left %s; want throttled, > 0",
			a.Throttled(), left)
	}
	a.expire(t0.Add(time.Second))
	if a.Throttled() {
		t.Errorf("reading at max age still throttles, want open")
	}
	got := slices.Sorted(maps.Keys(states))
	if !slices.Equal(got, []string{"open", "throttled"}) || states["throttled"] != time.Second {
		t.Errorf("recorded states %v, want open and throttled for 1s", states)
	}
}

func TestAdmissionDisabled(t *testing.T) {
	a := testAdmission(AdmissionConfig{Disabled: true})
	a.observe(&events.Resource{Host: "h1", HostCPUPercent: 100}, time.Now())
	if a.Throttled() {
		t.Errorf("disabled admission throttled, want open")
	}
}

func TestParseKindCounts(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]int
		wantErr bool
	}{
		{"", map[string]int{}, false},
		{"http=4, csv=0", map[string]int{"http": 4, "csv": 0}, false},
		{"http", nil, true},
		{"http=x", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseKindCounts(tt.in)
		if (err != nil) != tt.wantErr || !maps.Equal(got, tt.want) {
			t.Errorf("ParseKindCounts(%q) = %v, %v; want %v, error %v",
				tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
