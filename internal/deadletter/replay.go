package deadletter

import (
	"context"
	"errors"
	"fmt"
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
	DryRun bool
	// Delete removes an entry from the dead-letter stream once its request
	// is back on the submit subject (replayed now or before). Default keep.
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
	// StatusWouldReplay is a dry run's StatusReplayed.
	StatusWouldReplay Status = "would replay"
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
	// Subject and MsgID are where and as what the request was published.
	Subject string `json:"subject,omitempty"`
	MsgID   string `json:"msg_id,omitempty"`
	// Reason says why an entry is not replayable.
	Reason string `json:"reason,omitempty"`
	// Deleted reports that the entry was removed from the stream.
	Deleted bool  `json:"deleted,omitempty"`
	Err     error `json:"-"`
}

// Replay publishes the work request of each entry back to
// events.SubmitSubject(kind), with its attempt count and trace reset, and
// returns one outcome per entry in order. It returns an error, with the
// outcomes so far, only when ctx ends or the stream cannot be reached for
// deletes; a failure of one entry is in its outcome.
// The replayed request carries the dead letter's sequence (Replay), which
// is part of its message IDs on every stream, so the ready and results
// streams do not take it for the original.
func Replay(ctx context.Context, conn *bus.Conn, entries []Entry,
	opts ReplayOptions) ([]Outcome, error) {
	var dead jetstream.Stream
	if opts.Delete && !opts.DryRun {
		var err error
		if dead, err = conn.JS.Stream(ctx, events.StreamDead); err != nil {
			return nil, fmt.Errorf("replay: stream %s: %w", events.StreamDead, err)
		}
	}

	outcomes := make([]Outcome, 0, len(entries))
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return outcomes, fmt.Errorf("replay: %w", err)
		}
		outcomes = append(outcomes, replayOne(ctx, conn, dead, e, opts))
	}
	return outcomes, nil
}

// replayOne publishes the request of e and deletes e when asked; dead is
// nil unless deleting.
func replayOne(ctx context.Context, conn *bus.Conn, dead jetstream.Stream, e Entry,
	opts ReplayOptions) Outcome {
	out := Outcome{Entry: e}
	req, err := Request(e, time.Now())
	if err != nil {
		out.Status, out.Reason = StatusNotReplayable, err.Error()
		return out
	}
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
		out.Status = StatusDuplicate
	}

	if dead != nil {
		err := dead.DeleteMsg(ctx, e.Seq)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			out.Status = StatusFailed
			out.Err = fmt.Errorf("delete %s seq %d: %w", events.StreamDead, e.Seq, err)
			return out
		}
		out.Deleted = true
	}
	return out
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
