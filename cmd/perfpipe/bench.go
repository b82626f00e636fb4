package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bench"
	"github.com/perfpipe/perfpipe/internal/broker"
)

type benchFlags struct {
	samples     int
	consumeMsgs int
	msgSize     int
	storeDir    string
	external    bool
}

func benchCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("bench")
	f := &benchFlags{}
	fs.IntVar(&f.samples, "accuracy-samples", 100_000, "samples per distribution in the accuracy table")
	fs.IntVar(&f.consumeMsgs, "consume-msgs", 200_000, "messages in the JetStream consume baseline")
	fs.IntVar(&f.msgSize, "msg-size", 128, "bytes per message in the consume baseline")
	fs.StringVar(&f.storeDir, "store-dir", "", "store of the embedded server; empty means a temporary folder")
	fs.BoolVar(&f.external, "external-nats", false, "measure the server at --nats-url instead of an embedded one")

	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "perfpipe bench [flags]",
		ShortHelp:  "measure quantile accuracy and ingest rates on this machine",
		LongHelp: "Prints the accuracy of perfpipe's quantiles beside a last-100-samples\n" +
			"baseline, and the JetStream consume rate of this machine. Runs against an\n" +
			"embedded NATS server unless --external-nats is given.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unexpected arguments %q", errUsage, args)
			}
			return runBench(ctx, stdout, g, f)
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
	return nil
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
