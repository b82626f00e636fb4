package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/peterbourgon/ff/v3/ffcli"
	"golang.org/x/term"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func watchCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("watch")
	once := fs.Bool("once", false, "print one table and exit")
	wait := fs.Duration("wait", 3*time.Second, "with --once: how long to collect snapshots")
	group := fs.String("group", "", "show only groups starting with this (service or service.op)")
	every := fs.Duration("interval", time.Second, "how often to redraw")

	return &ffcli.Command{
		Name:       "watch",
		ShortUsage: "perfpipe watch [--once] [--group agent] [flags]",
		ShortHelp:  "show a live table of performance snapshots",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-watch", log)
			if err != nil {
				return err
			}
			defer conn.Close()
			return runWatch(ctx, conn.NC, stdout, *once, *wait, *every, *group)
		},
	}
}

func runWatch(ctx context.Context, nc *nats.Conn, w io.Writer, once bool,
	wait, every time.Duration, group string) error {
	var (
		mu     sync.Mutex
		latest = map[string]events.Snapshot{}
	)
	sub, err := nc.Subscribe(events.SnapshotAll, func(m *nats.Msg) {
		var s events.Snapshot
		if events.Unmarshal(m.Data, &s) != nil || !s.Partial {
			return // finals repeat a closed window; the table is live
		}
		key := s.Service + "." + s.Op
		if !strings.HasPrefix(key, group) {
			return
		}
		mu.Lock()
		latest[key] = s
		mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", events.SnapshotAll, err)
	}
	defer sub.Unsubscribe()

	if once {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		mu.Lock()
		defer mu.Unlock()
		if len(latest) == 0 && group != "" {
			return fmt.Errorf("no snapshots of groups starting with %q within %s", group, wait)
		}
		if len(latest) == 0 {
			return fmt.Errorf("no snapshots within %s: is the aggregator running?", wait)
		}
		return printTable(w, latest)
	}

	// Clear the screen between tables only on a terminal.
	f, isFile := w.(*os.File)
	clear := isFile && term.IsTerminal(int(f.Fd()))
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		mu.Lock()
		if clear {
			fmt.Fprint(w, "\033[H\033[2J")
		}
		fmt.Fprintf(w, "perfpipe snapshots at %s\n\n", time.Now().Format(time.TimeOnly))
		err := printTable(w, latest)
		mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// printTable writes one row per group, sorted by service and op.
func printTable(w io.Writer, snaps map[string]events.Snapshot) error {
	keys := make([]string, 0, len(snaps))
	for k := range snaps {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SERVICE\tOP\tCOUNT\tERR\tRATE/s\tP50 ms\tP95 ms\tP99 ms\tP99.9 ms\tMAX ms\tEXTRA\t")
	for _, k := range keys {
		s := snaps[k]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			s.Service, s.Op, s.Count, s.Errors, s.Rate,
			latency(s.P50Ms), latency(s.P95Ms), latency(s.P99Ms), latency(s.P999Ms),
			latency(s.MaxMs), extra(&s))
	}
	return tw.Flush()
}

// latency formats a latency, "-" when the window held no timing.
func latency(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *v)
}

// extra formats the cache and resource figures of a snapshot.
func extra(s *events.Snapshot) string {
	var parts []string
	if c := s.Cache; c != nil {
		parts = append(parts, fmt.Sprintf("hits %d misses %d", c.Hits, c.Misses))
	}
	if r := s.Resource; r != nil {
		parts = append(parts, fmt.Sprintf("cpu %.1f%% rss %.1fMiB host cpu %.1f%% mem %.1f%%",
			r.CPUPercent, float64(r.RSSBytes)/(1<<20), r.HostCPUPercent, r.HostMemUsedPerc))
	}
	return strings.Join(parts, "; ")
}
