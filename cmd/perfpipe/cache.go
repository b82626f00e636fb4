package main

import (
	"context"
	"fmt"
	"io"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
)

func cacheCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("cache invalidate")
	w := &wiring{}
	w.bindStore(fs)
	kind := fs.String("kind", "", "drop every cached result of this kind")
	pattern := fs.String("pattern", "", "drop keys matching this glob, e.g. 'perfpipe:result:csv:*'")

	invalidate := &ffcli.Command{
		Name:       "invalidate",
		ShortUsage: "perfpipe cache invalidate (--kind K | --pattern GLOB) [--redis-url URL]",
		ShortHelp:  "drop cached results by kind or key pattern (SCAN, never KEYS)",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			glob, err := invalidationPattern(*kind, *pattern)
			if err != nil {
				return err
			}
			return runInvalidate(ctx, stdout, g, w, glob)
		},
	}
	return &ffcli.Command{
		Name:        "cache",
		ShortUsage:  "perfpipe cache <subcommand> [flags]",
		ShortHelp:   "manage the result cache",
		Subcommands: []*ffcli.Command{invalidate},
		Exec: func(context.Context, []string) error {
			return fmt.Errorf("%w: perfpipe cache needs a subcommand: invalidate", errUsage)
		},
	}
}

// invalidationPattern is the glob of --kind or --pattern; exactly one.
func invalidationPattern(kind, pattern string) (string, error) {
	switch {
	case kind != "" && pattern != "":
		return "", fmt.Errorf("%w: give --kind or --pattern, not both", errUsage)
	case kind != "":
		return cache.ResultKey(kind, "*"), nil
	case pattern != "":
		return pattern, nil
	}
	return "", fmt.Errorf("%w: give --kind or --pattern", errUsage)
}

func runInvalidate(ctx context.Context, stdout io.Writer, g *globals, w *wiring, glob string) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-cache", log)
	if err != nil {
		return err
	}
	defer conn.Close()
	store, err := w.openStore(ctx, conn, log)
	if err != nil {
		return err
	}
	defer store.Close()

	n, err := store.DeleteMatching(ctx, glob)
	if err != nil {
		return fmt.Errorf("invalidate %s in %s: %w", glob, store.Name(), err)
	}
	fmt.Fprintf(stdout, "deleted %d keys matching %s from %s\n", n, glob, store.Name())
	return nil
}
