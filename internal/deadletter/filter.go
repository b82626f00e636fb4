package deadletter

import (
	"slices"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Filter selects dead letters. Every set field must match; the zero Filter
// matches everything.
type Filter struct {
	// IDs keeps dead letters whose work request ID is one of these; empty
	// keeps any.
	IDs []string
	// Kind keeps dead letters of this kind; empty keeps any.
	Kind string
	// Reason keeps dead letters whose reason contains this text, ignoring
	// case; empty keeps any.
	Reason string
	// Service keeps dead letters from this service; empty keeps any.
	Service string
	// Since keeps dead letters from this time on; zero means no bound.
	Since time.Time
	// Until keeps dead letters up to this time; zero means no bound.
	Until time.Time
	// Limit is the most entries List returns, the oldest first; zero or
	// less means no limit.
	Limit int
}

// Selective reports whether f narrows the selection by content or time;
// a limit alone does not.
func (f Filter) Selective() bool {
	return len(f.IDs) > 0 || f.Kind != "" || f.Reason != "" || f.Service != "" ||
		!f.Since.IsZero() || !f.Until.IsZero()
}

// Match reports whether dl passes every condition of f except Limit.
func (f Filter) Match(dl *events.DeadLetter) bool {
	switch {
	case len(f.IDs) > 0 && !slices.Contains(f.IDs, dl.ID):
		return false
	case f.Kind != "" && events.Token(f.Kind) != events.Token(dl.Kind):
		return false
	case f.Reason != "" && !containsFold(dl.Reason, f.Reason):
		return false
	case f.Service != "" && f.Service != dl.Service:
		return false
	case !f.Since.IsZero() && dl.Time.Before(f.Since):
		return false
	case !f.Until.IsZero() && dl.Time.After(f.Until):
		return false
	}
	return true
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
