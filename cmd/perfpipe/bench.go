package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bench"
	"github.com/perfpipe/perfpipe/internal/broker"
)

type benchFlags struct {
	ingest         bench.IngestConfig
	samples        int
	visibilityRuns int
	consumeMsgs    int
	msgSize        int
	storeDir       string
	external       bool
	pipeline       bool
	work           bench.PipelineConfig
	lateness       bool
	late           bench.LatenessConfig
	burst          bool
	adaptive       bool
	adapt          bench.AdaptiveConfig
}

func benchCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("bench")
	f := &benchFlags{}
	fs.IntVar(&f.samples, "accuracy-samples", 100_000, "samples per distribution in the accuracy table")
	fs.IntVar(&f.consumeMsgs, "consume-msgs", 200_000, "messages in the JetStream consume baseline")
	fs.IntVar(&f.msgSize, "msg-size", 128, "bytes per message in the consume baseline")
	fs.IntVar(&f.ingest.Producers, "producers", 2, "timing producers in the ingest run")
	fs.IntVar(&f.ingest.Ops, "ops", 20, "operations each producer times")
	fs.DurationVar(&f.ingest.Duration, "duration", 5*time.Second, "how long the producers record")
	fs.IntVar(&f.visibilityRuns, "visibility-runs", 20, "samples timed from record to snapshot")
	fs.StringVar(&f.storeDir, "store-dir", "", "store of the embedded server; empty means a temporary folder")
	fs.BoolVar(&f.external, "external-nats", false, "measure the server at --nats-url instead of an embedded one")
	fs.BoolVar(&f.pipeline, "pipeline", true, "measure the work path: scheduler, batcher, agent")
	fs.IntVar(&f.work.Items, "pipeline-items", 20_000, "no-op items in each work-path throughput run")
	fs.IntVar(&f.work.BatchCount, "pipeline-batch-count", 32,
		"items per batch in the batched work-path runs")
	fs.BoolVar(&f.lateness, "lateness", true, "measure how late delayed items are released")
	fs.IntVar(&f.late.Items, "lateness-items", 10_000,
		"delayed items (1-5 s) in the lateness run")
	fs.BoolVar(&f.burst, "lateness-burst", true,
		"also release the lateness items all due at one instant")
	adaptiveFlags(fs, f)

	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "perfpipe bench [flags]",
		ShortHelp:  "measure quantile accuracy and ingest rates on this machine",
		LongHelp: "Prints the accuracy of perfpipe's quantiles beside a last-100-samples\n" +
			"baseline, the JetStream consume rate of this machine, and the rate at which\n" +
			"timing samples go from producers through NATS into the aggregator's windows,\n" +
			"all in one run. Runs against a fresh embedded NATS server unless\n" +
			"--external-nats is given (then the server should hold no other telemetry).\n" +
			"With --pipeline, it then times no-op work through scheduler, batcher and\n" +
			"agent with and without batching, and the latency of each stage at half the\n" +
			"batched rate. With --lateness, it then submits delayed items (1 to 5 s) to a\n" +
			"scheduler without a credit limit and prints how late they were released;\n" +
			"with --lateness-burst, again with every item due at the same instant.\n" +
			"With --adaptive, it then sweeps fixed batch sizes and the adaptive batcher\n" +
			"over sleep items whose cost changes halfway (about 4 minutes).\n" +
			"These runs always use fresh embedded servers, one per run.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := runBench(ctx, stdout, g, f); err != nil || !f.adaptive {
				return err
			}
			return printAdaptive(ctx, stdout, f.adapt)
		},
	}
}

func runBench(ctx context.Context, w io.Writer, g *globals, f *benchFlags) error {
	fmt.Fprintf(w, "quantile relative error, %d samples per distribution\n", f.samples)
	if err := bench.PrintAccuracy(w, bench.Accuracy(f.samples, uint64(time.Now().UnixNano()))); err != nil {
		return err
	}

	url, stop, err := benchServer(f, g)
	if err != nil {
		return err
	}
	defer stop()

	res, err := bench.JetStreamConsume(ctx, url, f.consumeMsgs, f.msgSize)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\njetstream consume baseline: %d msgs of %d B in %.2fs: %.0f msgs/s\n",
		res.Msgs, res.Size, res.Seconds, res.PerSecond)
	printNatsBench(ctx, w, url, f)

	in, err := bench.Ingest(ctx, url, f.ingest)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "timing ingest, end to end: %d samples from %d producers x %d ops in %.2fs "+
		"(%d batches): %.0f samples/s, %.1fx the consume baseline\n",
		in.Applied, f.ingest.Producers, f.ingest.Ops, in.Seconds, in.Batches, in.PerSecond,
		in.PerSecond/res.PerSecond)

	vis, err := bench.Visibility(ctx, url, f.visibilityRuns)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "record to published snapshot, %d runs: p50 %s, p99 %s, max %s\n",
		vis.Runs, vis.P50.Round(time.Millisecond), vis.P99.Round(time.Millisecond),
		vis.Max.Round(time.Millisecond))
	if f.pipeline {
		if err := printPipeline(ctx, w, f.work); err != nil {
			return err
		}
	}
	if !f.lateness {
		return nil
	}
	if err := printLateness(ctx, w, f.late); err != nil || !f.burst {
		return err
	}
	return printBurst(ctx, w, f.late)
}

// printPipeline runs the work-path bench and prints its table.
func printPipeline(ctx context.Context, w io.Writer, cfg bench.PipelineConfig) error {
	fmt.Fprintf(w, "\nwork path, no-op items (sleep 0 ms) through scheduler, batcher and agent, "+
		"%d items per throughput run, a fresh embedded server per run\n", cfg.Items)
	res, err := bench.Pipeline(ctx, cfg)
	if err != nil {
		return err
	}
	return bench.PrintPipeline(w, res)
}

// printLateness runs the lateness bench and prints its figures.
func printLateness(ctx context.Context, w io.Writer, cfg bench.LatenessConfig) error {
	fmt.Fprintf(w, "\nscheduler lateness, %d items delayed 1 to 5 s, shuffled, mixed priorities, "+
		"no credit limit, a fresh embedded server\n", cfg.Items)
	return runLateness(ctx, w, cfg)
}

// printBurst runs the lateness bench with every item due at one instant
// and prints its figures.
func printBurst(ctx context.Context, w io.Writer, cfg bench.LatenessConfig) error {
	cfg.Burst, cfg.MinDelay = true, 2*time.Second
	fmt.Fprintf(w, "\nscheduler lateness, burst: %d items all due 2 s after submitting began, "+
		"mixed priorities, no credit limit, a fresh embedded server\n", cfg.Items)
	return runLateness(ctx, w, cfg)
}

// runLateness runs one lateness bench and prints its figures.
func runLateness(ctx context.Context, w io.Writer, cfg bench.LatenessConfig) error {
	res, err := bench.Lateness(ctx, cfg)
	if err != nil && !errors.Is(err, bench.ErrEarly) {
		return err
	}
	if printErr := bench.PrintLateness(w, res); printErr != nil {
		return printErr
	}
	return err // ErrEarly: the figures are printed, and the run fails
}

// printNatsBench prints `nats bench js consume` on the same server when
// the nats CLI is installed, and says how to get it when it is not.
func printNatsBench(ctx context.Context, w io.Writer, url string, f *benchFlags) {
	path, err := exec.LookPath("nats")
	if err != nil {
		fmt.Fprintln(w, "nats bench js consume: skipped, no nats CLI on PATH "+
			"(go install github.com/nats-io/natscli/nats@v0.5.0)")
		return
	}
	line, err := bench.NatsCLIConsume(ctx, path, url, f.consumeMsgs, f.msgSize)
	if err != nil {
		fmt.Fprintln(w, "nats bench js consume: failed:", err)
		return
	}
	fmt.Fprintln(w, "nats bench js consume:", line)
}

// benchServer returns the URL to measure: an embedded server on a free
// port with a temporary store, or --nats-url.
func benchServer(f *benchFlags, g *globals) (string, func(), error) {
	if f.external {
		return g.natsURL, func() {}, nil
	}
	dir := f.storeDir
	cleanup := func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "perfpipe-bench-")
		if err != nil {
			return "", nil, err
		}
		dir, cleanup = tmp, func() { os.RemoveAll(tmp) }
	}
	srv, err := broker.Start(broker.Config{Port: -1, StoreDir: dir})
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return srv.ClientURL(), func() { srv.Shutdown(); cleanup() }, nil
}

// adaptiveFlags registers the flags of the adaptive batcher bench.
func adaptiveFlags(fs *flag.FlagSet, f *benchFlags) {
	fs.BoolVar(&f.adaptive, "adaptive", false,
		"sweep fixed batch sizes and the adaptive batcher over sleep items (about 4 min)")
	fs.DurationVar(&f.adapt.Target, "adaptive-target", 100*time.Millisecond,
		"batch p95 latency the adaptive batcher keeps to")
	fs.DurationVar(&f.adapt.Phase, "adaptive-phase", 15*time.Second,
		"how long each item cost lasts")
	fs.Func("adaptive-costs", "sleep per item of each phase, whole ms (default 1ms,3ms)",
		func(s string) (err error) {
			f.adapt.Costs, err = parseList(s, time.ParseDuration)
			return err
		})
	fs.Func("adaptive-sizes", "fixed batch sizes swept (default 1,8,16,24,32,64,128)",
		func(s string) (err error) {
			f.adapt.Sizes, err = parseList(s, strconv.Atoi)
			return err
		})
	fs.IntVar(&f.adapt.Window, "adaptive-window", 0,
		"batches per controller step; 0 means the batcher's default")
}

// parseList parses a comma-separated list with parse.
func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, part := range strings.Split(s, ",") {
		v, err := parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// printAdaptive runs the adaptive batcher bench and prints its table.
func printAdaptive(ctx context.Context, w io.Writer, cfg bench.AdaptiveConfig) error {
	fmt.Fprintln(w, "\nadaptive batcher, end to end: each fixed batch size, then the "+
		"controller, through scheduler, batcher and agent, a fresh embedded server per run")
	res, err := bench.Adaptive(ctx, cfg)
	if err != nil {
		return err
	}
	return bench.PrintAdaptive(w, res)
}
