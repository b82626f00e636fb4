package agent

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// States of intake, the statuses of the "admission" timing, which holds
// how long each state lasted.
const (
	intakeOpen      = "open"
	intakeThrottled = "throttled"
)

// throttle is the hysteresis of admission: whether intake stays stopped
// (or stops) after a reading of cpu and mem percent, given that it was
// throttled before. Readings between the watermarks keep the state.
func (a AdmissionConfig) throttle(throttled bool, cpu, mem float64) bool {
	if throttled {
		return cpu >= a.LowCPU || mem >= a.LowMem
	}
	return cpu > a.HighCPU || mem > a.HighMem
}

// admission holds intake while the monitor's latest reading of the host
// is above the high watermarks, until it falls below the low ones or goes
// stale. It is safe for concurrent use.
type admission struct {
	cfg AdmissionConfig
	log *slog.Logger
	// record, when set, records how long a state lasted.
	record func(state string, d time.Duration)

	mu        sync.Mutex
	throttled bool
	since     time.Time // when the current state began
	seen      time.Time // when the latest reading came
	cpu, mem  float64
	// changed is closed, and replaced, at every change of state.
	changed chan struct{}
	// cancelPull, when set, ends the pull in progress on throttling.
	cancelPull context.CancelFunc
}

func newAdmission(cfg AdmissionConfig, log *slog.Logger) *admission {
	return &admission{cfg: cfg, log: log, since: time.Now(), changed: make(chan struct{})}
}

// subscribe feeds the readings of perf.resource.> on core NATS to a.
func (a *admission) subscribe(nc *nats.Conn) (*nats.Subscription, error) {
	return nc.Subscribe(events.ResourceAll, func(msg *nats.Msg) {
		var r events.Resource
		if err := events.Unmarshal(msg.Data, &r); err != nil {
			a.log.Debug("resource reading ignored", "subject", msg.Subject, "err", err)
			return
		}
		a.observe(&r, time.Now())
	})
}

// observe takes a reading of the host, received at now.
func (a *admission) observe(r *events.Resource, now time.Time) {
	if a.cfg.Disabled || (a.cfg.Host != "*" && r.Host != a.cfg.Host) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen, a.cpu, a.mem = now, r.HostCPUPercent, r.HostMemUsedPerc
	a.set(a.cfg.throttle(a.throttled, a.cpu, a.mem), now, "")
}

// expire opens intake when the latest reading is stale at now, and
// returns how long until it goes stale otherwise.
func (a *admission) expire(now time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	left := a.seen.Add(a.cfg.MaxAge).Sub(now)
	if a.throttled && left <= 0 {
		a.set(false, now, "resource readings stale")
	}
	return left
}

// set moves to the throttled state or out of it; a.mu is held.
func (a *admission) set(throttled bool, now time.Time, why string) {
	if throttled == a.throttled {
		return
	}
	if a.record != nil {
		a.record(stateName(a.throttled), now.Sub(a.since))
	}
	a.throttled, a.since = throttled, now
	close(a.changed)
	a.changed = make(chan struct{})

	attrs := []any{"host_cpu_percent", a.cpu, "host_mem_used_percent", a.mem}
	switch {
	case throttled:
		a.log.Info("intake paused, host loaded", append(attrs,
			"high_cpu", a.cfg.HighCPU, "high_mem", a.cfg.HighMem)...)
		if a.cancelPull != nil {
			a.cancelPull()
		}
	case why != "":
		a.log.Info("intake resumed", "why", why)
	default:
		a.log.Info("intake resumed, host load down", append(attrs,
			"low_cpu", a.cfg.LowCPU, "low_mem", a.cfg.LowMem)...)
	}
}

func stateName(throttled bool) string {
	if throttled {
		return intakeThrottled
	}
	return intakeOpen
}

// Throttled reports whether intake is held.
func (a *admission) Throttled() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.throttled
}

// wait returns true once intake is open, or false when ctx ends first.
func (a *admission) wait(ctx context.Context) bool {
	for ctx.Err() == nil {
		left := a.expire(time.Now())
		a.mu.Lock()
		throttled, changed := a.throttled, a.changed
		a.mu.Unlock()
		if !throttled {
			return true
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return false
}

// watchPull has cancel called if intake is throttled before the returned
// func is; a pull in progress then ends, and its batch stays in the stream.
func (a *admission) watchPull(cancel context.CancelFunc) (unwatch func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.throttled {
		cancel()
	}
	a.cancelPull = cancel
	return func() {
		a.mu.Lock()
		a.cancelPull = nil
		a.mu.Unlock()
	}
}

// hostname names this machine as the monitor does by default.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}
