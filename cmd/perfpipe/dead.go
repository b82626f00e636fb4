package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/deadletter"
)

// maxErrorWidth is how much of a dead letter's error the list table shows.
const maxErrorWidth = 60

func deadCommand(stdout io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("perfpipe dead", flag.ContinueOnError)
	return &ffcli.Command{
		Name:        "dead",
		ShortUsage:  "perfpipe dead <list|replay> [flags]",
		ShortHelp:   "list and replay dead letters",
		FlagSet:     fs,
		Subcommands: []*ffcli.Command{deadListCommand(stdout), deadReplayCommand(stdout)},
		Exec: func(_ context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unknown dead command %q", errUsage, args[0])
			}
			return flag.ErrHelp
		},
	}
}

// deadFilterFlags are the filter flags list and replay share.
type deadFilterFlags struct {
	ids     listFlag
	kind    string
	reason  string
	service string
	since   string
	until   string
	limit   int
}

// register adds the flags to fs; limitUsage says what --limit counts.
func (f *deadFilterFlags) register(fs *flag.FlagSet, limitUsage string) {
	fs.Var(&f.ids, "id", "work request id; repeat or separate with commas")
	fs.StringVar(&f.kind, "kind", "", "only this kind")
	fs.StringVar(&f.reason, "reason", "", "only reasons containing this text (any case)")
	fs.StringVar(&f.service, "service", "", "only from this service")
	fs.StringVar(&f.since, "since", "", "only from this long ago (1h) or this time (RFC 3339) on")
	fs.StringVar(&f.until, "until", "", "only up to this long ago (1h) or this time (RFC 3339)")
	fs.IntVar(&f.limit, "limit", 100, limitUsage)
}

// filter builds the deadletter filter, checking the flags against now.
func (f *deadFilterFlags) filter(now time.Time) (deadletter.Filter, error) {
	since, err := parseWhen("--since", f.since, now)
	if err != nil {
		return deadletter.Filter{}, err
	}
	until, err := parseWhen("--until", f.until, now)
	if err != nil {
		return deadletter.Filter{}, err
	}
	if f.limit < 0 {
		return deadletter.Filter{}, fmt.Errorf("%w: --limit %d: want 0 or more", errUsage, f.limit)
	}
	return deadletter.Filter{
		IDs: f.ids, Kind: f.kind, Reason: f.reason, Service: f.service,
		Since: since, Until: until, Limit: f.limit,
	}, nil
}

// parseWhen reads a duration before now or an RFC 3339 time; empty is zero.
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%w: %s %q: want a duration ago (1h30m) or an RFC 3339 time",
		errUsage, name, s)
}

// listFlag is a string list flag that may repeat and take commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func deadListCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("dead list")
	f := &deadFilterFlags{}
	f.register(fs, "most dead letters, oldest first; 0 for no limit")
	output := fs.String("output", "text", "format: text or json")

	return &ffcli.Command{
		Name:       "list",
		ShortUsage: "perfpipe dead list [--id X] [--kind K] [--reason R] [--since 1h] [flags]",
		ShortHelp:  "list dead letters",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := checkOutput(*output); err != nil {
				return err
			}
			filter, err := f.filter(time.Now())
			if err != nil {
				return err
			}
			return runDeadList(ctx, stdout, g, filter, *output)
		},
	}
}

func runDeadList(ctx context.Context, stdout io.Writer, g *globals, f deadletter.Filter,
	output string) error {
	conn, err := connectDead(ctx, g)
	if err != nil {
		return err
	}
	defer conn.Close()

	entries, err := deadletter.List(ctx, conn.JS, f)
	if err != nil {
		return err
	}
	if output == "json" {
		if entries == nil {
			entries = []deadletter.Entry{}
		}
		return json.NewEncoder(stdout).Encode(entries)
	}
	if len(entries) == 0 {
		fmt.Fprintln(stdout, "no dead letters match")
		return nil
	}
	if err := printDeadTable(stdout, entries); err != nil {
		return err
	}
	noteLimit(stdout, f, len(entries))
	return nil
}

func connectDead(ctx context.Context, g *globals) (*bus.Conn, error) {
	log, err := g.logger()
	if err != nil {
		return nil, err
	}
	return bus.Connect(ctx, g.natsURL, "perfpipe-dead", log)
}

// printDeadTable writes one row per entry, the error trimmed to one line.
func printDeadTable(w io.Writer, entries []deadletter.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tID\tSERVICE\tREASON\tATTEMPTS\tERROR")
	for _, e := range entries {
		dl := &e.DeadLetter
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
			e.Seq, dl.Time.Local().Format(time.DateTime), dl.Kind, orDash(dl.ID),
			orDash(dl.Service), dl.Reason, dl.Attempts, trim(dl.Error, maxErrorWidth))
	}
	return tw.Flush()
}

// noteLimit says when the limit may have cut the selection short.
func noteLimit(w io.Writer, f deadletter.Filter, n int) {
	if f.Limit > 0 && n >= f.Limit {
		fmt.Fprintf(w, "(first %d shown: more may match; raise --limit or narrow with --since)\n", n)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// trim puts s on one line of at most n runes.
func trim(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

func deadReplayCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("dead replay")
	f := &deadFilterFlags{}
	f.register(fs, "most requests, oldest first (a request's dead letters count as one); "+
		"0 for no limit")
	all := fs.Bool("all", false, "replay every dead letter (up to --limit requests), no filter")
	opts := deadletter.ReplayOptions{}
	fs.BoolVar(&opts.DryRun, "dry-run", false, "say what would be replayed, publish nothing "+
		"(a request published within the de-duplication window would be a duplicate)")
	fs.BoolVar(&opts.Delete, "delete", false, "delete the dead letters this run replays, and "+
		"those they supersede; duplicates (replayed before) are kept")
	output := fs.String("output", "text", "format: text or json")

	return &ffcli.Command{
		Name:       "replay",
		ShortUsage: "perfpipe dead replay (--id X | --kind K | --reason R | ... | --all) [flags]",
		ShortHelp:  "submit dead work requests again",
		LongHelp: "Publishes the work request of each matching dead letter to its submit\n" +
			"subject, attempts and trace reset. A run replays each request ID once,\n" +
			"from its earliest matching dead letter; the later ones are superseded.\n" +
			"Within the de-duplication window a second run publishes nothing again,\n" +
			"and --delete deletes nothing: it deletes only what the run replayed.",
		FlagSet: fs,
		Options: envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := checkOutput(*output); err != nil {
				return err
			}
			filter, err := f.filter(time.Now())
			if err != nil {
				return err
			}
			if !filter.Selective() && !*all {
				return fmt.Errorf("%w: replay needs a filter (--id, --kind, --reason, "+
					"--service, --since, --until) or --all", errUsage)
			}
			return runDeadReplay(ctx, stdout, g, filter, opts, *output)
		},
	}
}

// runDeadReplay lists every match, so that the limit counts requests and
// keeps each with its earliest dead letter, then replays them.
func runDeadReplay(ctx context.Context, stdout io.Writer, g *globals, f deadletter.Filter,
	opts deadletter.ReplayOptions, output string) error {
	conn, err := connectDead(ctx, g)
	if err != nil {
		return err
	}
	defer conn.Close()

	all := f
	all.Limit = 0
	entries, err := deadletter.List(ctx, conn.JS, all)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("no dead letters match")
	}
	entries, cut := deadletter.LimitRequests(entries, f.Limit, time.Now())

	outcomes, err := deadletter.Replay(ctx, conn, entries, opts)
	rep := newReplayReport(outcomes, opts, cut)
	if output == "json" {
		if jerr := json.NewEncoder(stdout).Encode(rep); jerr != nil && err == nil {
			err = jerr
		}
	} else {
		rep.print(stdout, f.Limit, err == nil)
	}
	if err != nil {
		return err
	}
	if n := rep.Counts.Failed; n > 0 {
		return fmt.Errorf("%d of %d replays failed", n, len(outcomes))
	}
	return nil
}

// replayReport is what replay prints: per entry and in total.
type replayReport struct {
	DryRun bool `json:"dry_run"`
	Delete bool `json:"delete"`
	// Limited reports that --limit left out requests that match.
	Limited  bool          `json:"limited"`
	Counts   replayCounts  `json:"counts"`
	Outcomes []replayEntry `json:"outcomes"`
}

// replayCounts counts the outcomes by status.
type replayCounts struct {
	Replayed      int `json:"replayed"`
	WouldReplay   int `json:"would_replay"`
	Duplicate     int `json:"duplicate"`
	Superseded    int `json:"superseded"`
	NotReplayable int `json:"not_replayable"`
	Failed        int `json:"failed"`
	DeadLetters   int `json:"dead_letters"`
}

// replayEntry is an outcome with its error as text.
type replayEntry struct {
	deadletter.Outcome
	Error string `json:"error,omitempty"`
}

func newReplayReport(outcomes []deadletter.Outcome, opts deadletter.ReplayOptions,
	limited bool) replayReport {
	rep := replayReport{
		DryRun: opts.DryRun, Delete: opts.Delete && !opts.DryRun, Limited: limited,
		Outcomes: []replayEntry{},
	}
	for _, o := range outcomes {
		e := replayEntry{Outcome: o}
		if o.Err != nil {
			e.Error = o.Err.Error()
		}
		rep.Outcomes = append(rep.Outcomes, e)
		rep.Counts.add(o.Status)
	}
	return rep
}

func (c *replayCounts) add(s deadletter.Status) {
	c.DeadLetters++
	switch s {
	case deadletter.StatusReplayed:
		c.Replayed++
	case deadletter.StatusWouldReplay:
		c.WouldReplay++
	case deadletter.StatusDuplicate:
		c.Duplicate++
	case deadletter.StatusSuperseded:
		c.Superseded++
	case deadletter.StatusNotReplayable:
		c.NotReplayable++
	default:
		c.Failed++
	}
}

// print writes a line per entry and, when the run completed, the totals.
func (r replayReport) print(w io.Writer, limit int, complete bool) {
	for _, o := range r.Outcomes {
		fmt.Fprintln(w, describe(o.Outcome))
	}
	if !complete {
		return
	}
	c := r.Counts
	if r.DryRun {
		fmt.Fprintf(w, "dry run: would replay %d (unless published within the last %s), "+
			"superseded %d, not replayable %d, of %d dead letters\n", c.WouldReplay,
			bus.DedupWindow, c.Superseded, c.NotReplayable, c.DeadLetters)
	} else {
		fmt.Fprintf(w, "replayed %d, duplicate %d, superseded %d, not replayable %d, "+
			"failed %d, of %d dead letters\n", c.Replayed, c.Duplicate, c.Superseded,
			c.NotReplayable, c.Failed, c.DeadLetters)
	}
	if r.Delete && c.Duplicate > 0 {
		fmt.Fprintf(w, "(kept %d duplicates and the dead letters they supersede: "+
			"an earlier run replayed them)\n", c.Duplicate)
	}
	if r.Limited {
		fmt.Fprintf(w, "(first %d requests only: more match; raise --limit or narrow "+
			"with --since)\n", limit)
	}
}

// describe is one line on what replay did with an entry.
func describe(o deadletter.Outcome) string {
	head := fmt.Sprintf("seq %d %s:", o.Entry.Seq, orDash(o.Entry.DeadLetter.ID))
	var what string
	switch o.Status {
	case deadletter.StatusReplayed:
		what = fmt.Sprintf("%s to %s as %s", o.Status, o.Subject, o.MsgID)
	case deadletter.StatusWouldReplay:
		// Only the stream knows, on publishing, whether it is a duplicate.
		what = fmt.Sprintf("%s to %s as %s (unless published within the last %s)",
			o.Status, o.Subject, o.MsgID, bus.DedupWindow)
	case deadletter.StatusDuplicate:
		what = fmt.Sprintf("duplicate: %s was published within the last %s, not again",
			o.MsgID, bus.DedupWindow)
	case deadletter.StatusSuperseded:
		what = fmt.Sprintf("superseded by seq %d, the earliest dead letter of this request",
			o.SupersededBy)
	case deadletter.StatusNotReplayable:
		what = "not replayable: " + o.Reason
	default:
		what = fmt.Sprintf("%s: %v", o.Status, o.Err)
	}
	if o.Deleted {
		what += " (deleted)"
	}
	return head + " " + what
}
