// Command perfpipe runs the perfpipe services, alone or all together on an
// embedded NATS server, and submits and watches work.
//
// Every flag can also be set by an environment variable: PERFPIPE_ plus the
// flag name in capitals with dashes as underscores (--nats-url is
// PERFPIPE_NATS_URL).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
)

// defaultNATSURL is where a local nats-server or `perfpipe up` listens.
const defaultNATSURL = "nats://127.0.0.1:4222"

// errUsage marks a bad flag or argument: exit code 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout))
}

// run runs the command in args, printing results to stdout and errors to
// stderr, and returns the exit code: 0, 1 for a failure, 2 for bad usage.
func run(ctx context.Context, args []string, stdout io.Writer) int {
	root := newRoot(stdout)
	err := root.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "perfpipe:", err)
		return 2
	}
	if err == nil {
		err = root.Run(ctx)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "perfpipe:", err)
		return 2
	default:
		fmt.Fprintln(os.Stderr, "perfpipe:", err)
		return 1
	}
}

// newRoot builds the command tree.
func newRoot(stdout io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "perfpipe",
		FlagSet:    flag.NewFlagSet("perfpipe", flag.ContinueOnError),
		ShortUsage: "perfpipe <command> [flags]",
		LongHelp: "A work pipeline that measures itself. Start everything with `perfpipe up`,\n" +
			"submit work with `perfpipe submit`, watch it with `perfpipe watch`.",
		Subcommands: []*ffcli.Command{
			upCommand(), serverCommand(),
			schedulerCommand(), batcherCommand(), agentCommand(), aggregatorCommand(),
			monitorCommand(),
			submitCommand(stdout), watchCommand(stdout), deadCommand(stdout),
			recurringCommand(stdout), cacheCommand(stdout), benchCommand(stdout),
		},
		Exec: func(_ context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
			}
			return flag.ErrHelp
		},
	}
}

// noArgs refuses positional arguments, which no command takes.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, args)
	}
	return nil
}

// checkOutput accepts the two output formats of commands that print data.
func checkOutput(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("%w: --output %q: want text or json", errUsage, format)
	}
	return nil
}

// globals are the flags every command that talks to NATS shares.
type globals struct {
	natsURL   string
	logLevel  string
	logFormat string
}

func newFlagSet(name string) (*flag.FlagSet, *globals) {
	fs := flag.NewFlagSet("perfpipe "+name, flag.ContinueOnError)
	g := &globals{}
	fs.StringVar(&g.natsURL, "nats-url", defaultNATSURL, "NATS server URL")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	return fs, g
}

func envOptions() []ff.Option {
	return []ff.Option{ff.WithEnvVarPrefix("PERFPIPE")}
}

// logger builds the process logger on stderr.
func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: %v", errUsage, g.logLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: want text or json", errUsage, g.logFormat)
}
