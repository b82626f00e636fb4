package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/mem"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

// Name is the monitor's service name in its own timings.
const Name = "monitor"

// opSample is the timing of one reading of the host and its processes.
const opSample = "sample"

// warnEvery is the shortest time between two warnings of the same kind.
const warnEvery = time.Minute

// flushTimeout bounds the last flush of timings when Run returns.
const flushTimeout = 2 * time.Second

// Service samples CPU and memory and publishes the readings.
type Service struct {
	conn *bus.Conn
	cfg  Config
	log  *slog.Logger
	rec  *timing.Recorder
	self int32

	// Owned by the Run goroutine.
	procs       map[int32]*tracked // by pid
	sampleWarn  rateLimit
	scanWarn    rateLimit
	publishWarn rateLimit

	mu     sync.Mutex
	latest []events.Resource
}

// New returns a monitor that publishes over conn. Zero fields of cfg take
// their defaults; a nil log means slog.Default().
func New(conn *bus.Conn, cfg Config, log *slog.Logger) (*Service, error) {
	if conn == nil {
		return nil, errors.New("new monitor: nil conn")
	}
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log = log.With("service", Name)
	rec, err := timing.New(conn.JS, Name, timing.Options{Host: cfg.Host, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("new monitor: %w", err)
	}
	return &Service{
		conn:  conn,
		cfg:   cfg,
		log:   log,
		rec:   rec,
		self:  int32(os.Getpid()),
		procs: make(map[int32]*tracked),
	}, nil
}

// Run reads and publishes once per Config.Interval until ctx is cancelled,
// then publishes its last timings, waiting briefly, and returns nil. A
// failed reading or publication is logged and retried at the next tick.
// Run must not be called twice at the same time.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("monitor started", "host", s.cfg.Host, "interval", s.cfg.Interval,
		"process_name", s.cfg.ProcessName)
	s.prime(ctx)

	var g errgroup.Group
	g.Go(func() error { return s.rec.Run(ctx) })
	g.Go(func() error { return s.loop(ctx) })
	err := g.Wait()

	s.flush()
	s.log.Info("monitor stopped")
	return err
}

// loop takes a reading per interval until ctx is cancelled.
func (s *Service) loop(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.tick(ctx)
		}
	}
}

// Latest returns the readings of the last interval, one per process. It is
// safe to call from any goroutine.
func (s *Service) Latest() []events.Resource {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.latest)
}

// prime takes the first CPU times of the host and of the processes running
// now, so that the first tick reports one interval's use.
func (s *Service) prime(ctx context.Context) {
	if _, err := cpu.PercentWithContext(ctx, 0, false); err != nil {
		s.log.Debug("host cpu not primed", "err", err)
	}
	var r events.Resource
	for _, t := range s.scan(ctx) {
		s.readProcess(ctx, t, &r)
	}
}

// tick takes one reading and publishes it.
func (s *Service) tick(ctx context.Context) {
	readings, err := s.sample(ctx)
	if err != nil {
		if ok, n := s.sampleWarn.allow(time.Now()); ok {
			s.log.Warn("resources not read, retrying next interval",
				"suppressed", n, "err", err)
		}
		return
	}

	s.mu.Lock()
	s.latest = slices.Clone(readings)
	s.mu.Unlock()

	s.publish(ctx, readings)
}

// sample reads the host and every perfpipe process, and records how long
// that took.
func (s *Service) sample(ctx context.Context) (readings []events.Resource, err error) {
	start := time.Now()
	defer func() { s.rec.Since(opSample, start, err) }()

	base, err := s.readHost(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range s.scan(ctx) {
		r := base
		if s.readProcess(ctx, t, &r) {
			readings = append(readings, r)
		}
	}
	return readings, nil
}

// readHost returns a reading with the host's figures filled in.
func (s *Service) readHost(ctx context.Context) (events.Resource, error) {
	r := events.Resource{Host: s.cfg.Host, Time: time.Now()}

	pct, err := cpu.PercentWithContext(ctx, 0, false)
	if err != nil {
		return r, fmt.Errorf("read host cpu: %w", err)
	}
	if len(pct) == 0 {
		return r, errors.New("read host cpu: no figure")
	}
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return r, fmt.Errorf("read host memory: %w", err)
	}

	r.HostCPUPercent = pct[0]
	r.HostMemUsed = vm.Used
	r.HostMemTotal = vm.Total
	r.HostMemUsedPerc = vm.UsedPercent
	return r, nil
}

// publish sends each reading to its resource subject. All of them together
// get one interval, so that an unreachable server delays the next reading
// by no more than that.
func (s *Service) publish(ctx context.Context, readings []events.Resource) {
	pctx, cancel := context.WithTimeout(ctx, s.cfg.Interval)
	defer cancel()

	failed := 0
	var lastErr error
	for i := range readings {
		r := &readings[i]
		err := s.conn.Publish(pctx, events.ResourceSubject(r.Host, r.Service), r, "")
		if err != nil {
			failed++
			lastErr = err
		}
	}
	if failed == 0 || ctx.Err() != nil {
		return
	}
	if ok, n := s.publishWarn.allow(time.Now()); ok {
		s.log.Warn("resource readings not published, retrying next interval",
			"failed", failed, "readings", len(readings), "suppressed", n, "err", lastErr)
	}
}

// flush publishes the timings of the last reading, which may have ended
// after the recorder's own last flush, within flushTimeout.
func (s *Service) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := s.rec.Flush(ctx); err != nil {
		s.log.Warn("timings not published at stop", "err", err)
	}
}

// rateLimit lets one warning of a kind through per warnEvery and counts
// the ones it holds back.
type rateLimit struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were held back since the
// last one that was logged.
func (l *rateLimit) allow(now time.Time) (bool, int) {
	if !l.last.IsZero() && now.Sub(l.last) < warnEvery {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}
