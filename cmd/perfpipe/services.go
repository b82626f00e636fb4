package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/peterbourgon/ff/v3/ffcli"
	"golang.org/x/sync/errgroup"

	"github.com/perfpipe/perfpipe/internal/api"
	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
	"github.com/perfpipe/perfpipe/services/aggregator"
	"github.com/perfpipe/perfpipe/services/batcher"
	"github.com/perfpipe/perfpipe/services/monitor"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

// wiring holds the configuration of every service as flags set it; a
// command binds the flags of the services it runs.
type wiring struct {
	scheduler  scheduler.Config
	batcher    batcher.Config
	agent      agent.Config
	aggregator aggregator.Config
	monitor    monitor.Config

	redisURL     string
	httpAddr     string
	allowedHosts string
}

func (w *wiring) bindScheduler(fs *flag.FlagSet) {
	c := &w.scheduler
	fs.IntVar(&c.MaxInFlight, "max-in-flight", scheduler.DefaultMaxInFlight,
		"released items without a result yet; higher priorities wait for this credit; "+
			"negative: no limit")
	fs.DurationVar(&c.AgingInterval, "aging", scheduler.DefaultAgingInterval,
		"waiting time that raises an item's priority by one; negative turns aging off")
	fs.DurationVar(&c.InFlightTimeout, "in-flight-timeout", scheduler.DefaultInFlightTimeout,
		"time after which a released item without a result stops holding credit")
	fs.IntVar(&c.ReservedInFlight, "reserved-in-flight", 0,
		"part of --max-in-flight only items of --reserved-priority or higher may use")
	c.ReservedPriority = scheduler.DefaultReservedPriority
	fs.Func("reserved-priority", fmt.Sprintf("lowest priority, 1-9, that may use the "+
		"reserved in-flight credit (default %d)", scheduler.DefaultReservedPriority),
		func(v string) error { return parsePriority(v, &c.ReservedPriority) })
	fs.StringVar(&c.RecurringBucket, "recurring-bucket", scheduler.DefaultRecurringBucket,
		"key-value bucket of the recurring definitions (perfpipe recurring --bucket)")
}

// parsePriority sets *p to v, a priority of 1 to 9. Zero is refused: in
// the scheduler's Config it would mean the default, not priority 0.
func parsePriority(v string, p *int) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > events.MaxPriority {
		return fmt.Errorf("%q: want 1 to %d", v, events.MaxPriority)
	}
	*p = n
	return nil
}

func (w *wiring) bindBatcher(fs *flag.FlagSet) {
	l := &w.batcher.Default
	fs.IntVar(&l.MaxCount, "batch-count", batcher.DefaultMaxCount, "most items per batch")
	fs.IntVar(&l.MaxBytes, "batch-bytes", batcher.DefaultMaxBytes, "most encoded bytes per batch")
	fs.DurationVar(&l.Linger, "batch-linger", batcher.DefaultLinger,
		"longest wait for a batch to fill after its first item")
	fs.Func("batch-target-p95", "adaptive mode: batch count kept so that the p95 "+
		"of batch run time stays near this; 0 = fixed --batch-count",
		func(v string) error {
			d, err := time.ParseDuration(v)
			switch {
			case err != nil:
				return err
			case d > 0:
				w.batcher.Adaptive = &batcher.AdaptiveConfig{TargetP95: d}
			default:
				w.batcher.Adaptive = nil
			}
			return nil
		})
}

func (w *wiring) bindAgent(fs *flag.FlagSet) {
	c := &w.agent
	fs.StringVar(&c.Name, "agent-name", "", "agent name in results; empty means the host name")
	fs.IntVar(&c.Workers, "workers", agent.DefaultWorkers, "work items run at once")
	fs.IntVar(&c.MaxAttempts, "attempts", agent.DefaultMaxAttempts,
		"attempts per item for transient failures (1 means no retry)")
	fs.DurationVar(&c.ItemTimeout, "item-timeout", agent.DefaultItemTimeout,
		"longest time one run of an item may take")
	fs.DurationVar(&c.AckWait, "ack-wait", agent.DefaultAckWait,
		"time after which the batch of a dead agent is delivered again")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", agent.DefaultDrainTimeout,
		"time in-flight items get to finish at stop; the rest go to other agents")
	fs.StringVar(&w.allowedHosts, "http-allowed-hosts", strings.Join(agent.DefaultAllowedHosts, ","),
		"comma-separated hosts the http kind may call; * allows any")
	fs.DurationVar(&c.HTTP.Timeout, "http-timeout", agent.DefaultHTTPTimeout,
		"longest time one http request may take, body included (under --item-timeout)")
	fs.DurationVar(&c.HTTP.CacheTTL, "http-cache-ttl", 0,
		"how long http results stay cached; 0 = not cached")
	fs.StringVar(&c.CSV.DataDir, "csv-data-dir", ".", "folder the csv kind reads files from")
	fs.DurationVar(&c.CSV.CacheTTL, "csv-cache-ttl", agent.DefaultCSVCacheTTL,
		"how long csv results stay cached; negative = not cached")
	fs.Func("kind-concurrency", "items of a kind run at once, as kind=n,...; 0 = only --workers",
		func(v string) error {
			m, err := agent.ParseKindCounts(v)
			c.KindConcurrency = m
			return err
		})
	fs.Int64Var(&c.MaxInFlightBytes, "max-in-flight-bytes", agent.DefaultMaxInFlightBytes,
		"payload bytes of the items running at once; negative = no cap")
	a := &c.Admission
	fs.BoolVar(&a.Disabled, "admission-off", false, "never hold intake for host load")
	fs.Float64Var(&a.HighCPU, "admission-high-cpu", agent.DefaultHighCPU,
		"host CPU percent above which no new batch is pulled")
	fs.Float64Var(&a.LowCPU, "admission-low-cpu", agent.DefaultLowCPU,
		"host CPU percent below which intake resumes (with --admission-low-mem)")
	fs.Float64Var(&a.HighMem, "admission-high-mem", agent.DefaultHighMem,
		"host memory percent above which no new batch is pulled")
	fs.Float64Var(&a.LowMem, "admission-low-mem", agent.DefaultLowMem,
		"host memory percent below which intake resumes (with --admission-low-cpu)")
}

func (w *wiring) bindAggregator(fs *flag.FlagSet) {
	c := &w.aggregator
	c.Windows = aggregator.DefaultWindows()
	fs.Var((*durationList)(&c.Windows), "windows",
		"comma-separated snapshot windows; the smallest is published final once per window")
	fs.DurationVar(&c.Resolution, "resolution", aggregator.DefaultResolution,
		"bucket width, by event time; every window must be a multiple of it")
	fs.DurationVar(&c.AllowedLateness, "lateness", aggregator.DefaultAllowedLateness,
		"how long after its end a window still takes samples")
	fs.DurationVar(&c.PublishInterval, "publish-interval", aggregator.DefaultPublishInterval,
		"how often snapshots are published")
	fs.DurationVar(&c.SnapshotTTL, "snapshot-ttl", aggregator.DefaultSnapshotTTL,
		"TTL of the latest snapshots in the cache")
	fs.IntVar(&c.MaxGroups, "max-groups", aggregator.DefaultMaxGroups,
		"groups kept; samples of further groups go to the _overflow group")
	fs.IntVar(&c.Partitions, "partitions", 1, "aggregator instances sharing the groups")
	fs.IntVar(&c.Partition, "partition", 0, "which share of the groups this instance keeps, from 0")
}

// durationList is a flag of comma-separated durations.
type durationList []time.Duration

func (l *durationList) String() string {
	parts := make([]string, len(*l))
	for i, d := range *l {
		parts[i] = d.String()
	}
	return strings.Join(parts, ",")
}

func (l *durationList) Set(s string) error {
	var out []time.Duration
	for _, p := range splitList(s) {
		d, err := time.ParseDuration(p)
		if err != nil {
			return err
		}
		out = append(out, d)
	}
	*l = out
	return nil
}

func (w *wiring) bindMonitor(fs *flag.FlagSet) {
	fs.DurationVar(&w.monitor.Interval, "interval", monitor.DefaultInterval,
		"how often CPU and memory are read")
	fs.StringVar(&w.monitor.ProcessName, "process-name", monitor.DefaultProcessName,
		"executable name of the processes to watch")
}

func (w *wiring) bindStore(fs *flag.FlagSet) {
	fs.StringVar(&w.redisURL, "redis-url", "",
		"Redis for results and snapshots (redis://host:6379/0); empty means a JetStream KV bucket")
}

func (w *wiring) bindHTTP(fs *flag.FlagSet, def string) {
	fs.StringVar(&w.httpAddr, "http-addr", def,
		"address of /healthz, /snapshots and /metrics; empty turns HTTP off")
}

// openStore connects the cache: Redis when a URL is set, else a KV bucket.
// Redis sits behind a breaker, so that while it is down each cache call
// fails at once instead of after its timeout, and it comes back by itself.
// The KV bucket lives on the NATS connection the services need anyway:
// without it nothing runs, so a breaker there would save no time.
func (w *wiring) openStore(
	ctx context.Context, conn *bus.Conn, log *slog.Logger,
) (cache.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if w.redisURL == "" {
		return cache.NewKV(ctx, conn.JS, cache.DefaultBucket)
	}

	cache.LogTo(log)
	rd, err := cache.NewRedis(ctx, w.redisURL)
	if err != nil {
		return nil, err
	}
	return cache.NewBreaker(rd, cache.BreakerOptions{
		OnStateChange: func(from, to cache.BreakerState, err error) {
			switch {
			case from == cache.BreakerClosed:
				log.Warn("redis cache unavailable, running uncached until it answers; "+
					"check the redis server", "err", err)
			case to == cache.BreakerClosed:
				log.Info("redis cache available again")
			default:
				log.Debug("redis cache probe", "state", to.String(), "err", err)
			}
		},
	}), nil
}

// component is one service ready to run.
type component struct {
	name string
	run  func(ctx context.Context) error
}

func (w *wiring) construct(name string, conn *bus.Conn, store cache.Store, log *slog.Logger,
	agg **aggregator.Service) (func(context.Context) error, error) {
	switch name {
	case "scheduler":
		s, err := scheduler.New(conn, w.scheduler, log)
		return runOf(s, err)
	case "batcher":
		s, err := batcher.New(conn, w.batcher, log)
		return runOf(s, err)
	case "agent":
		w.agent.HTTP.AllowedHosts = splitList(w.allowedHosts)
		reg, err := agent.NewBuiltins(w.agent)
		if err != nil {
			return nil, err
		}
		s, err := agent.New(conn, store, reg, w.agent, log)
		return runOf(s, err)
	case "aggregator":
		s, err := aggregator.New(conn, store, w.aggregator, log)
		*agg = s
		return runOf(s, err)
	case "monitor":
		s, err := monitor.New(conn, w.monitor, log)
		return runOf(s, err)
	}
	return nil, fmt.Errorf("%w: unknown service %q", errUsage, name)
}

type runner interface{ Run(context.Context) error }

func runOf[R runner](r R, err error) (func(context.Context) error, error) {
	if err != nil {
		return nil, err
	}
	return r.Run, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// runAll runs the components and the HTTP server until ctx ends or one of
// them fails; then it stops the others and waits for them.
func runAll(ctx context.Context, log *slog.Logger, comps []component, srv *http.Server) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, c := range comps {
		g.Go(func() error {
			log.Info("service started", "service", c.name)
			if err := c.run(ctx); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			log.Info("service stopped", "service", c.name)
			return nil
		})
	}
	if srv != nil {
		g.Go(func() error { return serveHTTP(ctx, log, srv) })
	}
	return g.Wait()
}

// serveHTTP serves until ctx ends, then shuts down within 5 s.
func serveHTTP(ctx context.Context, log *slog.Logger, srv *http.Server) error {
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", srv.Addr, err)
	}
	log.Info("http listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("http serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// httpServer returns the server of /healthz and /snapshots, or nil when
// addr is empty.
func httpServer(addr string, conns []*bus.Conn, store cache.Store,
	snaps api.SnapshotSource) *http.Server {
	if addr == "" {
		return nil
	}
	checks, optional := map[string]api.Check{}, map[string]api.Check{}
	if store != nil {
		optional["cache "+store.Name()] = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return store.Ping(ctx)
		}
	}
	for _, c := range conns {
		checks["nats "+c.NC.Opts.Name] = func() error {
			if s := c.NC.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats %s", s)
			}
			return nil
		}
	}
	return &http.Server{Addr: addr, Handler: api.NewHandler(checks, optional, snaps),
		ReadHeaderTimeout: 5 * time.Second}
}

// serviceCommand is the command that runs one service alone against
// --nats-url.
func serviceCommand(name, help string, bind func(w *wiring, fs *flag.FlagSet)) *ffcli.Command {
	fs, g := newFlagSet(name)
	w := &wiring{}
	bind(w, fs)
	return &ffcli.Command{
		Name:       name,
		ShortUsage: "perfpipe " + name + " [flags]",
		ShortHelp:  help,
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return runServices(ctx, g, w, name)
		},
	}
}

// runServices runs the named services until ctx ends, each on its own
// NATS connection, with the cache opened when one of them needs it.
func runServices(ctx context.Context, g *globals, w *wiring, names ...string) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	conns := make([]*bus.Conn, len(names))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, name := range names {
		if conns[i], err = bus.Connect(ctx, g.natsURL, "perfpipe-"+name, log); err != nil {
			return err
		}
	}
	if err := conns[0].EnsureStreams(ctx); err != nil {
		return err
	}

	var store cache.Store
	if needsStore(names) {
		if store, err = w.openStore(ctx, conns[0], log); err != nil {
			return err
		}
		defer store.Close()
		log.Info("cache ready", "store", store.Name())
	}

	comps := make([]component, len(names))
	var agg *aggregator.Service
	for i, name := range names {
		run, err := w.construct(name, conns[i], store, log, &agg)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		comps[i] = component{name: name, run: run}
	}
	var snaps api.SnapshotSource
	if agg != nil {
		snaps = agg
	}
	return runAll(ctx, log, comps, httpServer(w.httpAddr, conns, store, snaps))
}

func needsStore(names []string) bool {
	for _, n := range names {
		if n == "agent" || n == "aggregator" {
			return true
		}
	}
	return false
}

func schedulerCommand() *ffcli.Command {
	return serviceCommand("scheduler", "release submitted work by time and priority",
		func(w *wiring, fs *flag.FlagSet) { w.bindScheduler(fs) })
}

func batcherCommand() *ffcli.Command {
	return serviceCommand("batcher", "group ready work into batches",
		func(w *wiring, fs *flag.FlagSet) { w.bindBatcher(fs) })
}

func agentCommand() *ffcli.Command {
	return serviceCommand("agent", "run batches of work, with a result cache",
		func(w *wiring, fs *flag.FlagSet) { w.bindAgent(fs); w.bindStore(fs) })
}

func aggregatorCommand() *ffcli.Command {
	return serviceCommand("aggregator", "turn timings into performance snapshots",
		func(w *wiring, fs *flag.FlagSet) { w.bindAggregator(fs); w.bindStore(fs); w.bindHTTP(fs, "") })
}

func monitorCommand() *ffcli.Command {
	return serviceCommand("monitor", "publish CPU and memory readings of perfpipe processes",
		func(w *wiring, fs *flag.FlagSet) { w.bindMonitor(fs) })
}
