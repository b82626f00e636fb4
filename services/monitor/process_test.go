package monitor

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"
)

func TestServiceLabel(t *testing.T) {
	tests := []struct {
		name    string
		cmdline []string
		want    string
	}{
		{"subcommand", []string{"/usr/bin/perfpipe", "agent"}, "agent"},
		{"flags after", []string{"perfpipe", "agent", "--nats-url", "nats://x:4222"}, "agent"},
		{"flag with equals first", []string{"perfpipe", "--log=debug", "batcher"}, "batcher"},
		{"bool flag first", []string{"perfpipe", "-v", "up"}, "up"},
		// The simple rule cannot tell a flag's separate value from a
		// subcommand; Config.Service documents it.
		{"flag value first", []string{"perfpipe", "--log", "debug", "agent"}, "debug"},
		{"double dash", []string{"perfpipe", "--", "scheduler"}, "scheduler"},
		{"empty argument skipped", []string{"perfpipe", "", "agent"}, "agent"},
		{"only flags", []string{"monitor.test", "-test.v=true", "-test.run=X"}, DefaultService},
		{"no arguments", []string{"perfpipe"}, DefaultService},
		{"empty cmdline", nil, DefaultService},
		{"made a token", []string{"perfpipe", "my.service name"}, "my_service_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serviceLabel(tt.cmdline); got != tt.want {
				t.Errorf("serviceLabel(%q) = %q, want %q", tt.cmdline, got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero", Config{}, false},
		{"all set", Config{
			Interval: time.Second, ProcessName: "pp", Service: "up", Host: "h.example",
		}, false},
		{"minimum interval", Config{Interval: MinInterval}, false},
		{"negative interval", Config{Interval: -time.Second}, true},
		{"too short interval", Config{Interval: time.Millisecond}, true},
		{"process path", Config{ProcessName: "/usr/bin/perfpipe"}, true},
		{"service not a token", Config{Service: "a.b"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("Validate() = %v, want error: %t", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	got := Config{}.withDefaults()
	if got.Interval != DefaultInterval {
		t.Errorf("Interval = %s, want %s", got.Interval, DefaultInterval)
	}
	if got.ProcessName != DefaultProcessName {
		t.Errorf("ProcessName = %q, want %q", got.ProcessName, DefaultProcessName)
	}
	if got.Host == "" {
		t.Errorf("Host is empty, want the host name")
	}
	if got.Service != "" {
		t.Errorf("Service = %q, want empty (derived from the command line)", got.Service)
	}
}

func TestRateLimit(t *testing.T) {
	var l rateLimit
	t0 := time.Now()
	steps := []struct {
		at             time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{2 * time.Second, false, 0},
		{warnEvery, true, 2},
		{warnEvery + time.Second, false, 0},
		{3 * warnEvery, true, 1},
	}
	for i, s := range steps {
		ok, n := l.allow(t0.Add(s.at))
		if ok != s.wantOK || n != s.wantSuppressed {
			t.Errorf("step %d: allow(+%s) = %t, %d; want %t, %d",
				i, s.at, ok, n, s.wantOK, s.wantSuppressed)
		}
	}
}

// BenchmarkScan measures one pass over the process table, the bulk of a
// reading's cost.
func BenchmarkScan(b *testing.B) {
	s := &Service{
		cfg:   Config{}.withDefaults(),
		log:   slog.New(slog.DiscardHandler),
		self:  int32(os.Getpid()),
		procs: make(map[int32]*tracked),
	}
	ctx := context.Background()
	for b.Loop() {
		s.scan(ctx)
	}
}
