package deadletter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// ReplayOptions tunes Replay.
type ReplayOptions struct {
	// DryRun decides each entry's outcome without publishing or deleting.
	// It cannot tell a replay from a duplicate, which only the stream
	// decides on publishing: both are StatusWouldReplay.
	DryRun bool
	// Delete removes from the dead-letter stream the entries this run
	// replayed (StatusReplayed) and the entries they superseded. A
	// duplicate, replayed by an earlier run, is kept with the entries it
	// supersedes: the later ones record how the last replay failed.
	// Default keep.
	Delete bool
}

// Status is what Replay did with one entry.
type Status string

// Replay statuses.
const (
	// StatusReplayed means the request was published to its submit subject.
	StatusReplayed Status = "replayed"
	// StatusDuplicate means this dead letter was replayed before, within
	// the de-duplication window, and the stream dropped this copy.
	StatusDuplicate Status = "duplicate"
	// StatusWouldReplay is a dry run's StatusReplayed or StatusDuplicate:
	// publishing nothing, it cannot tell whether the request was published
	// within the de-duplication window, which makes a real run's duplicate.
	StatusWouldReplay Status = "would replay"
	// StatusSuperseded means an earlier entry of the same request ID is
	// replayed in this one's place (the same work failed again after a
	// replay); SupersededBy names it. Dry runs report it too.
	StatusSuperseded Status = "superseded"
	// StatusNotReplayable means the entry holds no work request to
	// replay; Reason says why.
	StatusNotReplayable Status = "not replayable"
	// StatusFailed means publishing or deleting failed; Err says why.
	StatusFailed Status = "failed"
)

// Outcome is the result of replaying one entry.
type Outcome struct {
	Entry  Entry  `json:"entry"`
	Status Status `json:"status"`
	// Subject and MsgID are where and as what the request was published;
	// for a superseded entry, those of the entry replayed in its place.
	Subject string `json:"subject,omitempty"`
	MsgID   string `json:"msg_id,omitempty"`
	// Reason says why an entry is not replayable.
	Reason string `json:"reason,omitempty"`
	// SupersededBy is the sequence of the entry replayed in this one's
	// place, the earliest of its request ID.
	SupersededBy uint64 `json:"superseded_by,omitempty"`
	// Deleted reports that the entry was removed from the stream.
	Deleted bool  `json:"deleted,omitempty"`
	Err     error `json:"-"`
}

// Replay publishes the work request of each entry back to
// events.SubmitSubject(kind), with its attempt count and trace reset, and
// returns one outcome per entry, in stream sequence order. It returns an
// error, with the outcomes so far, only when ctx ends or the stream cannot
// be reached for deletes; a failure of one entry is in its outcome.
//
// A run replays each request ID at most once: of the entries holding the
// same request ID, only the earliest (lowest sequence) is published, and
// the later ones, the same work dead-lettered again after a replay, are
// StatusSuperseded. The replayed request carries the sequence of the entry
// it was replayed from (Replay), which is part of its message IDs on every
// stream, so the ready and results streams do not take it for the
// original, and a second run within the de-duplication window is dropped
// as a duplicate.
func Replay(ctx context.Context, conn *bus.Conn, entries []Entry,
	opts ReplayOptions) ([]Outcome, error) {
	var dead jetstream.Stream
	if opts.Delete && !opts.DryRun {
		var err error
		if dead, err = conn.JS.Stream(ctx, events.StreamDead); err != nil {
			return nil, fmt.Errorf("replay: stream %s: %w", events.StreamDead, err)
		}
	}

	r := &run{conn: conn, dead: dead, opts: opts, now: time.Now(), first: map[string]int{}}
	r.outcomes = make([]Outcome, 0, len(entries))
	for _, e := range bySeq(entries) {
		if err := ctx.Err(); err != nil {
			return r.outcomes, fmt.Errorf("replay: %w", err)
		}
		r.outcomes = append(r.outcomes, r.entry(ctx, e))
	}
	return r.outcomes, nil
}

// run is the state of one Replay call.
type run struct {
	conn *bus.Conn
	dead jetstream.Stream // nil unless deleting
	opts ReplayOptions
	now  time.Time
	// first maps a request ID to the index in outcomes of its earliest
	// entry, the one replayed.
	first    map[string]int
	outcomes []Outcome
}

// entry replays e, or supersedes it when an earlier entry of its request
// ID came first.
func (r *run) entry(ctx context.Context, e Entry) Outcome {
	req, err := Request(e, r.now)
	if err != nil {
		return Outcome{Entry: e, Status: StatusNotReplayable, Reason: err.Error()}
	}
	if i, ok := r.first[req.ID]; ok {
		return supersede(ctx, r.dead, e, r.outcomes[i])
	}
	r.first[req.ID] = len(r.outcomes)
	return replayOne(ctx, r.conn, r.dead, e, req, r.opts)
}

// replayOne publishes req, the request of e, and deletes e when asked and
// the publish was not a duplicate; dead is nil unless deleting.
func replayOne(ctx context.Context, conn *bus.Conn, dead jetstream.Stream, e Entry,
	req *events.WorkRequest, opts ReplayOptions) Outcome {
	out := Outcome{Entry: e}
	out.Subject, out.MsgID = events.SubmitSubject(req.Kind), events.SubmitMsgID(req)
	if opts.DryRun {
		out.Status = StatusWouldReplay
		return out
	}

	ack, err := conn.PublishAck(ctx, out.Subject, req, out.MsgID)
	if err != nil {
		out.Status, out.Err = StatusFailed, fmt.Errorf("replay seq %d: %w", e.Seq, err)
		return out
	}
	out.Status = StatusReplayed
	if ack.Duplicate {
		// Replayed by an earlier run: this one deletes nothing of it.
		out.Status = StatusDuplicate
		return out
	}

	if dead != nil {
		if err := deleteEntry(ctx, dead, e.Seq); err != nil {
			out.Status, out.Err = StatusFailed, err
			return out
		}
		out.Deleted = true
	}
	return out
}

// supersede reports e as replaced by the earlier entry of its request
// whose outcome is by, and deletes e when by was deleted: this run
// replayed e's request then.
func supersede(ctx context.Context, dead jetstream.Stream, e Entry, by Outcome) Outcome {
	out := Outcome{
		Entry: e, Status: StatusSuperseded, Subject: by.Subject, MsgID: by.MsgID,
		SupersededBy: by.Entry.Seq,
	}
	if dead == nil || !by.Deleted {
		return out
	}
	if err := deleteEntry(ctx, dead, e.Seq); err != nil {
		out.Status, out.Err = StatusFailed, err
		return out
	}
	out.Deleted = true
	return out
}

// deleteEntry removes seq from the dead stream; one already gone is fine.
func deleteEntry(ctx context.Context, dead jetstream.Stream, seq uint64) error {
	err := dead.DeleteMsg(ctx, seq)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete %s seq %d: %w", events.StreamDead, seq, err)
	}
	return nil
}

// LimitRequests keeps the entries of the first n requests in entries, in
// stream sequence order, and reports whether it left any out. All entries
// of one request ID count as one request, so that a limit never keeps a
// later entry without the earliest that Replay replays in its place; an
// entry holding no replayable request (see Request, at now) counts as one
// on its own. n zero or less keeps all.
func LimitRequests(entries []Entry, n int, now time.Time) ([]Entry, bool) {
	if n <= 0 {
		return bySeq(entries), false
	}

	var kept []Entry
	taken := map[string]bool{}
	cut := false
	for _, e := range bySeq(entries) {
		id, ok := requestID(e, now)
		switch {
		case ok && taken[id]:
			kept = append(kept, e)
		case n == 0:
			cut = true
		default:
			n--
			if ok {
				taken[id] = true
			}
			kept = append(kept, e)
		}
	}
	return kept, cut
}

// requestID is the ID of the request Replay would publish for e, if any.
func requestID(e Entry, now time.Time) (string, bool) {
	req, err := Request(e, now)
	if err != nil {
		return "", false
	}
	return req.ID, true
}

// bySeq returns entries sorted by stream sequence, leaving entries as is.
func bySeq(entries []Entry) []Entry {
	return slices.SortedStableFunc(slices.Values(entries), func(a, b Entry) int {
		return cmp.Compare(a.Seq, b.Seq)
	})
}

// Request returns the work request to replay from e, submitted at now, or
// an error saying why e holds none.
func Request(e Entry, now time.Time) (*events.WorkRequest, error) {
	dl := &e.DeadLetter
	if len(dl.Data) == 0 {
		return nil, errors.New("no original message kept")
	}
	req := &events.WorkRequest{}
	if err := events.Unmarshal(dl.Data, req); err != nil {
		return nil, fmt.Errorf("not a work request: %w", err)
	}

	if req.ID == "" {
		req.ID = dl.ID // assigned by the scheduler from the work stream
	}
	if req.ID == "" {
		req.ID = "dead-" + strconv.FormatUint(e.Seq, 10)
	}
	if req.Kind == "" {
		req.Kind = kindOf(dl)
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if !req.Deadline.IsZero() && !req.Deadline.After(now) {
		return nil, fmt.Errorf("deadline passed at %s", req.Deadline.Format(time.RFC3339))
	}

	req.Attempt = 0
	req.Replay = e.Seq
	req.Trace = events.Trace{Submitted: now}
	return req, nil
}

// kindOf is the kind of a request that left it out: the last token of the
// work subject it came from, else the dead letter's kind.
func kindOf(dl *events.DeadLetter) string {
	for _, prefix := range []string{events.SubmitPrefix, events.ReadyPrefix} {
		if strings.HasPrefix(dl.Subject, prefix) {
			return events.LastToken(dl.Subject)
		}
	}
	return dl.Kind
}
