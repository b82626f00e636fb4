package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

func recurringCommand(stdout io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("perfpipe recurring", flag.ContinueOnError)
	return &ffcli.Command{
		Name:       "recurring",
		ShortUsage: "perfpipe recurring <add|list|remove> [flags]",
		ShortHelp:  "define work that the scheduler submits every interval or on a cron schedule",
		LongHelp: "Definitions live in a JetStream key-value bucket that every scheduler\n" +
			"watches. Each tick is submitted once, with the id <id>.<tick unix seconds>;\n" +
			"ticks missed while no scheduler ran are caught up once, for the latest only.",
		FlagSet: fs,
		Subcommands: []*ffcli.Command{
			recurringAddCommand(stdout), recurringListCommand(stdout),
			recurringRemoveCommand(stdout),
		},
		Exec: func(_ context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unknown recurring command %q", errUsage, args[0])
			}
			return flag.ErrHelp
		},
	}
}

// recurringFlagSet is newFlagSet plus the bucket flag.
func recurringFlagSet(name string) (*flag.FlagSet, *globals, *string) {
	fs, g := newFlagSet("recurring " + name)
	bucket := fs.String("bucket", scheduler.DefaultRecurringBucket,
		"key-value bucket of the recurring definitions")
	return fs, g, bucket
}

type recurringAddFlags struct {
	id       string
	every    time.Duration
	cron     string
	kind     string
	payload  string
	priority int
	timeout  time.Duration
	paused   bool
	replace  bool
}

func recurringAddCommand(stdout io.Writer) *ffcli.Command {
	fs, g, bucket := recurringFlagSet("add")
	f := &recurringAddFlags{}
	fs.StringVar(&f.id, "id", "", "definition id: letters, digits, - or _")
	fs.DurationVar(&f.every, "every", 0, "interval between ticks, 1s or more")
	fs.StringVar(&f.cron, "cron", "", `cron expression in UTC, such as "*/5 * * * *"`)
	fs.StringVar(&f.kind, "kind", "", "kind of work")
	fs.StringVar(&f.payload, "payload", "", "JSON payload of each request")
	fs.IntVar(&f.priority, "priority", 0, "priority 0-9, higher first")
	fs.DurationVar(&f.timeout, "timeout", 0, "deadline of each request after its tick; 0 none")
	fs.BoolVar(&f.paused, "paused", false, "store it paused: nothing is submitted")
	fs.BoolVar(&f.replace, "replace", false, "replace a definition with the same id")

	return &ffcli.Command{
		Name:       "add",
		ShortUsage: "perfpipe recurring add --id X (--every 1m | --cron SPEC) --kind K [flags]",
		ShortHelp:  "add a recurring definition",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			def, err := f.definition(time.Now())
			if err != nil {
				return err
			}
			// Only add creates the bucket; the schedulers create it too.
			return withRecurring(ctx, g, *bucket, scheduler.OpenRecurring,
				func(s *scheduler.RecurringStore) error {
					return addRecurring(ctx, stdout, s, def, f.replace)
				})
		},
	}
}

// definition builds and checks the definition the flags describe.
func (f *recurringAddFlags) definition(now time.Time) (*events.Recurring, error) {
	if f.payload != "" && !json.Valid([]byte(f.payload)) {
		return nil, fmt.Errorf("%w: --payload is not valid JSON", errUsage)
	}
	def := &events.Recurring{
		ID: f.id, Cron: f.cron, Every: events.Duration(f.every), Paused: f.paused,
		Created: now.Truncate(time.Second),
		Work: events.WorkTemplate{
			Kind: f.kind, Priority: f.priority, Payload: events.Payload(f.payload),
			Timeout: events.Duration(f.timeout),
		},
	}
	if err := def.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return def, nil
}

func addRecurring(ctx context.Context, stdout io.Writer, s *scheduler.RecurringStore,
	def *events.Recurring, replace bool) error {
	var err error
	if replace {
		err = s.Put(ctx, def)
	} else {
		err = s.Add(ctx, def)
	}
	if errors.Is(err, scheduler.ErrRecurringExists) {
		return fmt.Errorf("recurring %s exists: remove it or add with --replace", def.ID)
	}
	if err != nil {
		return err
	}
	// Validate refused schedules without a tick, so first is set.
	sched, _ := def.Schedule()
	first := sched.Next(def.Created)
	fmt.Fprintf(stdout, "recurring %s added; first tick %s\n", def.ID,
		first.Local().Format(time.DateTime))
	return nil
}

func recurringListCommand(stdout io.Writer) *ffcli.Command {
	fs, g, bucket := recurringFlagSet("list")
	output := fs.String("output", "text", "format: text or json")
	return &ffcli.Command{
		Name:       "list",
		ShortUsage: "perfpipe recurring list [--output json]",
		ShortHelp:  "list recurring definitions and their last ticks",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := checkOutput(*output); err != nil {
				return err
			}
			err := withRecurring(ctx, g, *bucket, scheduler.LookupRecurring,
				func(s *scheduler.RecurringStore) error {
					list, err := s.List(ctx)
					if err != nil {
						return err
					}
					return printRecurring(stdout, list, *output)
				})
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return printNoBucket(stdout, *bucket, *output)
			}
			return err
		},
	}
}

// printNoBucket is list's output when the bucket does not exist: no
// definitions, as an empty JSON array or a sentence saying why.
func printNoBucket(w io.Writer, bucket, output string) error {
	if output == "json" {
		return printRecurring(w, []scheduler.RecurringInfo{}, output)
	}
	fmt.Fprintf(w, "no recurring definitions (bucket %s does not exist)\n", bucket)
	return nil
}

// printRecurring writes the definitions as a table or a JSON array.
func printRecurring(w io.Writer, list []scheduler.RecurringInfo, output string) error {
	if output == "json" {
		return json.NewEncoder(w).Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no recurring definitions")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSCHEDULE\tKIND\tPRIORITY\tPAUSED\tLAST FIRED")
	for _, d := range list {
		sched := d.Cron
		if sched == "" {
			sched = "every " + d.Every.String()
		}
		last := "-"
		if !d.LastFired.IsZero() {
			last = d.LastFired.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%t\t%s\n", d.ID, sched, d.Work.Kind,
			d.Work.Priority, d.Paused, last)
	}
	return tw.Flush()
}

func recurringRemoveCommand(stdout io.Writer) *ffcli.Command {
	fs, g, bucket := recurringFlagSet("remove")
	id := fs.String("id", "", "definition id")
	return &ffcli.Command{
		Name:       "remove",
		ShortUsage: "perfpipe recurring remove --id X",
		ShortHelp:  "remove a recurring definition",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 || *id == "" {
				return fmt.Errorf("%w: remove needs --id and no arguments", errUsage)
			}
			err := withRecurring(ctx, g, *bucket, scheduler.LookupRecurring,
				func(s *scheduler.RecurringStore) error {
					if err := s.Remove(ctx, *id); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "recurring %s removed\n", *id)
					return nil
				})
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return fmt.Errorf("recurring %s not found: bucket %s does not exist",
					*id, *bucket)
			}
			return err
		},
	}
}

// openRecurring opens a recurring bucket: scheduler.OpenRecurring creates
// a missing one, scheduler.LookupRecurring does not.
type openRecurring func(context.Context, jetstream.JetStream,
	string) (*scheduler.RecurringStore, error)

// withRecurring connects, opens the bucket with open and runs fn on it.
func withRecurring(ctx context.Context, g *globals, bucket string, open openRecurring,
	fn func(*scheduler.RecurringStore) error) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-recurring", log)
	if err != nil {
		return err
	}
	defer conn.Close()

	store, err := open(ctx, conn.JS, bucket)
	if err != nil {
		return err
	}
	return fn(store)
}
