package monitor

import (
	"context"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// helperEnv makes the test binary act as a long-running child process
// in TestHelperProcess.
const helperEnv = "PERFPIPE_MONITOR_HELPER"

const testInterval = 100 * time.Millisecond

func TestRunPublishesOwnProcess(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	got := collect(t, conn)
	cfg := Config{Interval: testInterval, Host: "test-host", Service: "monitor-test"}
	svc := startMonitor(t, conn, cfg)

	self := int32(os.Getpid())
	var m received
	testenv.WaitFor(t, 5*time.Second, "a reading of the test process", func() bool {
		var ok bool
		m, ok = got.find(func(m received) bool { return m.r.PID == self })
		return ok
	})

	r := m.r
	if want := events.ResourceSubject("test-host", "monitor-test"); m.subject != want {
		t.Errorf("subject = %q, want %q", m.subject, want)
	}
	if r.Host != "test-host" || r.Service != "monitor-test" {
		t.Errorf("host, service = %q, %q; want %q, %q", r.Host, r.Service,
			"test-host", "monitor-test")
	}
	if r.RSSBytes == 0 {
		t.Errorf("RSSBytes = 0, want > 0")
	}
	if r.HostMemTotal == 0 || r.HostMemUsed > r.HostMemTotal {
		t.Errorf("host memory used/total = %d/%d, want 0 < used <= total",
			r.HostMemUsed, r.HostMemTotal)
	}
	for name, v := range map[string]float64{
		"CPUPercent": r.CPUPercent, "HostCPUPercent": r.HostCPUPercent,
		"HostMemUsedPerc": r.HostMemUsedPerc,
	} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			t.Errorf("%s = %v, want a finite value >= 0", name, v)
		}
	}
	if r.Time.IsZero() {
		t.Errorf("Time is zero")
	}

	latest := svc.Latest()
	if !slices.ContainsFunc(latest, func(r events.Resource) bool { return r.PID == self }) {
		t.Errorf("Latest() = %+v, want a reading of pid %d", latest, self)
	}
}

func TestRunMeasuresCPUUse(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	got := collect(t, conn)
	startMonitor(t, conn, Config{Interval: testInterval})

	burnStart := time.Now()
	burn(300 * time.Millisecond)

	self := int32(os.Getpid())
	testenv.WaitFor(t, 5*time.Second, "a reading of the test process with cpu > 0", func() bool {
		_, ok := got.find(func(m received) bool {
			return m.r.PID == self && m.r.Time.After(burnStart) && m.r.CPUPercent > 0
		})
		return ok
	})
}

// TestRunFindsPerfpipeProcesses runs the test binary under other names as
// child processes and checks which ones the monitor reports.
func TestRunFindsPerfpipeProcesses(t *testing.T) {
	dir := t.TempDir()
	perfpipe := linkTestBinary(t, filepath.Join(dir, "perfpipe"))
	other := linkTestBinary(t, filepath.Join(dir, "other"))
	symlink := filepath.Join(dir, "pp")
	if err := os.Symlink(perfpipe, symlink); err != nil {
		t.Fatal(err)
	}

	byName := startChild(t, perfpipe, "agent")
	byExe := startChild(t, symlink, "batcher")
	notOurs := startChild(t, other, "agent")

	conn := testenv.Conn(t, testenv.NATS(t))
	got := collect(t, conn)
	svc := startMonitor(t, conn, Config{Interval: testInterval})

	want := map[int32]string{byName: "agent", byExe: "batcher"}
	testenv.WaitFor(t, 10*time.Second, "readings of both perfpipe children", func() bool {
		for pid := range want {
			if _, ok := got.find(func(m received) bool { return m.r.PID == pid }); !ok {
				return false
			}
		}
		return true
	})

	for pid, service := range want {
		m, _ := got.find(func(m received) bool { return m.r.PID == pid })
		if m.r.Service != service {
			t.Errorf("pid %d: service = %q, want %q", pid, m.r.Service, service)
		}
	}
	// All three children ran before the monitor's first reading, so a
	// reading of the one named "other" would be here by now.
	if _, ok := got.find(func(m received) bool { return m.r.PID == notOurs }); ok {
		t.Errorf("pid %d named %q was reported, want it left out", notOurs, "other")
	}
	if n := len(svc.Latest()); n < 3 {
		t.Errorf("Latest() has %d readings, want at least 3 (self and two children)", n)
	}
}

// TestHelperProcess is not a test: it is the child process of
// TestRunFindsPerfpipeProcesses, and waits until its stdin closes.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("child process of TestRunFindsPerfpipeProcesses")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func TestRunReturnsOnCancel(t *testing.T) {
	// Registered first, so it runs after the server and connection are
	// closed.
	t.Cleanup(func() { goleak.VerifyNone(t) })

	conn := testenv.Conn(t, testenv.NATS(t))
	svc, err := New(conn, Config{Interval: testInterval}, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	stop := testenv.Run(t, svc, 3*time.Second)
	testenv.WaitFor(t, 5*time.Second, "a first reading", func() bool {
		return len(svc.Latest()) > 0
	})

	if err := stop(); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
}

func TestNew(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	tests := []struct {
		name    string
		conn    *bus.Conn
		cfg     Config
		wantErr bool
	}{
		{"defaults", conn, Config{}, false},
		{"nil conn", nil, Config{}, true},
		{"bad config", conn, Config{Interval: time.Nanosecond}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.conn, tt.cfg, nil)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("New() error = %v, want error: %t", err, tt.wantErr)
			}
		})
	}
}

// startMonitor runs a monitor until the test ends and checks that Run then
// returns nil.
func startMonitor(t *testing.T, conn *bus.Conn, cfg Config) *Service {
	t.Helper()
	svc, err := New(conn, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	testenv.Run(t, svc, 5*time.Second)
	return svc
}

// received is one resource reading taken off the telemetry stream.
type received struct {
	subject string
	r       events.Resource
}

// collector keeps every resource reading published on the stream.
type collector struct {
	mu  sync.Mutex
	got []received
}

// collect reads perf.resource.> with an ephemeral consumer until the test
// ends.
func collect(t *testing.T, conn *bus.Conn) *collector {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := conn.JS.CreateConsumer(ctx, events.StreamTelemetry, jetstream.ConsumerConfig{
		FilterSubject: events.ResourceAll,
		AckPolicy:     jetstream.AckNonePolicy,
	})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}

	c := &collector{}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		var r events.Resource
		if err := events.Unmarshal(msg.Data(), &r); err != nil {
			t.Errorf("decode %s: %v", msg.Subject(), err)
			return
		}
		c.mu.Lock()
		c.got = append(c.got, received{subject: msg.Subject(), r: r})
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	t.Cleanup(func() {
		cc.Stop()
		<-cc.Closed()
	})
	return c
}

// find returns the latest reading that matches.
func (c *collector) find(match func(received) bool) (received, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.got) - 1; i >= 0; i-- {
		if match(c.got[i]) {
			return c.got[i], true
		}
	}
	return received{}, false
}

// burn keeps one core busy for d.
func burn(d time.Duration) {
	var x uint64
	for end := time.Now().Add(d); time.Now().Before(end); {
		for i := 0; i < 1000; i++ {
			x = x*31 + uint64(i)
		}
	}
	_ = x
}

// linkTestBinary makes the running test binary available at path, as a
// hard link where possible and as a copy otherwise.
func linkTestBinary(t *testing.T, path string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(exe, path); err == nil {
		return path
	}

	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// startChild runs the test binary at path as TestHelperProcess with the
// service argument, and stops it when the test ends.
func startChild(t *testing.T, path, service string) int32 {
	t.Helper()
	cmd := exec.Command(path, "-test.run=^TestHelperProcess$", service)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return int32(cmd.Process.Pid)
}
