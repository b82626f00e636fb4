package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/cache"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func cacheCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("cache invalidate")
	w := &wiring{}
	w.bindStore(fs)
	kind := fs.String("kind", "", "drop every cached result of this kind (a plain kind name)")
	pattern := fs.String("pattern", "", "drop result keys matching this glob; it must start "+
		"with "+cache.ResultPrefix+", e.g. '"+cache.ResultPrefix+"csv:*'")

	invalidate := &ffcli.Command{
		Name:       "invalidate",
		ShortUsage: "perfpipe cache invalidate (--kind K | --pattern GLOB) [--redis-url URL]",
		ShortHelp:  "drop cached results by kind or key pattern (SCAN, never KEYS)",
		LongHelp: "Only perfpipe's result keys are ever deleted: a --pattern must start with\n" +
			cache.ResultPrefix + " (anything else is refused), and --kind K deletes\n" +
			cache.ResultPrefix + "K:*. Without --redis-url the results live in the\n" +
			cache.DefaultBucket + " key-value bucket; a missing bucket is left uncreated.",
		FlagSet: fs,
		Options: envOptions(),
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

// invalidationPattern is the glob of --kind or --pattern; exactly one. Both
// stay inside the result keys: a pattern must start with
// cache.ResultPrefix, and a kind must be a plain subject token.
func invalidationPattern(kind, pattern string) (string, error) {
	switch {
	case kind != "" && pattern != "":
		return "", fmt.Errorf("%w: give --kind or --pattern, not both", errUsage)
	case kind != "":
		if !plainKind(kind) {
			return "", fmt.Errorf("%w: --kind %q: want a plain kind name, "+
				"without dots, spaces or glob characters (*?[]\\)", errUsage, kind)
		}
		return cache.ResultKey(kind, "*"), nil
	case pattern != "":
		if !strings.HasPrefix(pattern, cache.ResultPrefix) {
			return "", fmt.Errorf("%w: --pattern %q: want it to start with %q "+
				"(only result keys are invalidated), e.g. '%scsv:*'",
				errUsage, pattern, cache.ResultPrefix, cache.ResultPrefix)
		}
		return pattern, nil
	}
	return "", fmt.Errorf("%w: give --kind or --pattern", errUsage)
}

// plainKind reports whether kind is one subject token with no glob
// character, so that the result-key pattern built from it matches that
// kind only.
func plainKind(kind string) bool {
	return events.ValidToken(kind) && !strings.ContainsAny(kind, `*?[]\`)
}

func runInvalidate(
	ctx context.Context, stdout io.Writer, g *globals, w *wiring, glob string,
) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-cache", log)
	if err != nil {
		return err
	}
	defer conn.Close()
	store, err := openInvalidationStore(ctx, conn, w, log)
	if errors.Is(err, cache.ErrNoBucket) {
		fmt.Fprintf(stdout, "no result cache bucket (%s); nothing to delete\n", cache.DefaultBucket)
		return nil
	}
	if err != nil {
		return err
	}
	defer store.Close()

	n, err := cache.DeleteResults(ctx, store, glob)
	if err != nil {
		return fmt.Errorf("invalidate %s in %s: %w", glob, store.Name(), err)
	}
	fmt.Fprintf(stdout, "deleted %d keys matching %s from %s\n", n, glob, store.Name())
	return nil
}

// openInvalidationStore opens Redis when --redis-url is set, else the
// existing result bucket: invalidating never creates it.
func openInvalidationStore(
	ctx context.Context, conn *bus.Conn, w *wiring, log *slog.Logger,
) (cache.Store, error) {
	if w.redisURL != "" {
		return w.openStore(ctx, conn, log)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return cache.OpenKV(ctx, conn.JS, cache.DefaultBucket)
}
