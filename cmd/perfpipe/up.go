package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/broker"
)

// allServices is every service, in the order they start.
var allServices = []string{"scheduler", "batcher", "agent", "aggregator", "monitor"}

func upCommand() *ffcli.Command {
	fs, g := newFlagSet("up")
	w := &wiring{}
	w.bindScheduler(fs)
	w.bindBatcher(fs)
	w.bindAgent(fs)
	w.bindAggregator(fs)
	w.bindMonitor(fs)
	w.bindStore(fs)
	w.bindHTTP(fs, "127.0.0.1:8080")
	storeDir := fs.String("store-dir", "data/nats", "JetStream store folder of the embedded NATS server")
	listen := fs.String("listen", "127.0.0.1:4222", "client address of the embedded NATS server")
	external := fs.Bool("external-nats", false, "use the server at --nats-url instead of an embedded one")
	only := fs.String("services", strings.Join(allServices, ","),
		"services to run in this process, comma-separated (leave one out to run it elsewhere)")

	return &ffcli.Command{
		Name:       "up",
		ShortUsage: "perfpipe up [flags]",
		ShortHelp:  "run all five services on an embedded NATS server",
		LongHelp: "Starts an embedded NATS server with JetStream (or uses --nats-url with\n" +
			"--external-nats), and runs the scheduler, batcher, agent, aggregator and\n" +
			"monitor in this process over real NATS connections.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			names, err := pickServices(*only)
			if err != nil {
				return err
			}
			if !*external {
				srv, err := startBroker(*listen, *storeDir)
				if err != nil {
					return err
				}
				defer srv.Shutdown()
				g.natsURL = srv.ClientURL()
			}
			return runServices(ctx, g, w, names...)
		},
	}
}

// pickServices parses --services: known names, each once, at least one.
func pickServices(list string) ([]string, error) {
	names := splitList(list)
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: --services is empty", errUsage)
	}
	for i, n := range names {
		if !slices.Contains(allServices, n) {
			return nil, fmt.Errorf("%w: --services: unknown service %q (have %s)",
				errUsage, n, strings.Join(allServices, ", "))
		}
		if slices.Contains(names[:i], n) {
			return nil, fmt.Errorf("%w: --services: %s twice", errUsage, n)
		}
	}
	return names, nil
}

// startBroker starts the embedded server on listen. The address is tried
// first so that a port in use is reported as such, at once.
func startBroker(listen, storeDir string) (*broker.Server, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("%w: --listen %q: %v", errUsage, listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("%w: --listen %q: bad port", errUsage, listen)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen: %w", err)
	}
	ln.Close()
	return broker.Start(broker.Config{Host: host, Port: port, StoreDir: storeDir})
}

func serverCommand() *ffcli.Command {
	fs := flag.NewFlagSet("perfpipe server", flag.ContinueOnError)
	storeDir := fs.String("store-dir", "data/nats", "JetStream store folder")
	listen := fs.String("listen", "127.0.0.1:4222", "client address")

	return &ffcli.Command{
		Name:       "server",
		ShortUsage: "perfpipe server [--listen ADDR] [--store-dir DIR]",
		ShortHelp:  "run only the embedded NATS server with JetStream",
		LongHelp: "Runs the same embedded nats-server that `perfpipe up` uses, so that the\n" +
			"services can run as separate processes on one machine without a\n" +
			"nats-server install.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			srv, err := startBroker(*listen, *storeDir)
			if err != nil {
				return err
			}
			defer srv.Shutdown()
			fmt.Fprintln(os.Stderr, "perfpipe: nats server listening on", srv.ClientURL())
			<-ctx.Done()
			return nil
		},
	}
}
