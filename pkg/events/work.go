package events

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxPriority is the highest priority; 0 is the lowest and the default.
const MaxPriority = 9

// CachePolicy tells the agent how to use the result cache for one request.
type CachePolicy struct {
	// Skip bypasses the cache for reading and writing.
	Skip bool `msgpack:"skip,omitempty" json:"skip,omitempty"`
	// TTL overrides the kind's cache TTL; zero keeps the kind's.
	TTL Duration `msgpack:"ttl,omitempty" json:"ttl,omitempty"`
}

// Trace holds the times a work item passed each stage. Services fill it in
// as the item moves; the agent turns it into the result's Stages.
type Trace struct {
	Submitted time.Time `msgpack:"submitted,omitempty" json:"submitted,omitempty"`
	Accepted  time.Time `msgpack:"accepted,omitempty" json:"accepted,omitempty"`
	Released  time.Time `msgpack:"released,omitempty" json:"released,omitempty"`
	Batched   time.Time `msgpack:"batched,omitempty" json:"batched,omitempty"`
}

// WorkRequest asks for one unit of work of a kind. It is published on
// SubmitSubject(kind); the ID is also the Nats-Msg-Id for de-duplication.
type WorkRequest struct {
	Meta
	// ID identifies the request end to end. When empty, the scheduler
	// assigns one from the stream sequence.
	ID string `msgpack:"id,omitempty" json:"id,omitempty"`
	// Kind selects the handler; when empty it is taken from the subject.
	Kind string `msgpack:"kind,omitempty" json:"kind,omitempty"`
	// Priority is 0-9, higher first.
	Priority int `msgpack:"priority,omitempty" json:"priority,omitempty"`
	// Delay holds the work back for this long after submission.
	Delay Duration `msgpack:"delay,omitempty" json:"delay,omitempty"`
	// NotBefore holds the work back until this time. With Delay too, the
	// later of the two wins.
	NotBefore time.Time `msgpack:"not_before,omitempty" json:"not_before,omitempty"`
	// Deadline, when set, is when the result stops being useful: the agent
	// gives up on work that has not started by then.
	Deadline time.Time `msgpack:"deadline,omitempty" json:"deadline,omitempty"`
	// Payload is the kind's input, a JSON document.
	Payload Payload `msgpack:"payload,omitempty" json:"payload,omitempty"`
	// ReplyTo, when set, also receives the result (core NATS).
	ReplyTo string      `msgpack:"reply_to,omitempty" json:"reply_to,omitempty"`
	Cache   CachePolicy `msgpack:"cache,omitempty" json:"cache,omitempty"`
	// Attempt is the run this request is for: 0 or 1 for the first, n for
	// the retry the agent submits after run n-1 failed transiently.
	Attempt int `msgpack:"attempt,omitempty" json:"attempt,omitempty"`
	// Replay is the dead-letter stream sequence this request was replayed
	// from, or zero. It is part of the request's message IDs, so that a
	// replay is not taken for a duplicate of the original.
	Replay uint64 `msgpack:"replay,omitempty" json:"replay,omitempty"`
	Trace  Trace  `msgpack:"trace,omitempty" json:"trace,omitempty"`
}

// EventType implements Event.
func (*WorkRequest) EventType() Type { return TypeWorkRequest }

// Due returns when the request may run: the later of NotBefore and the
// submission time plus Delay. A zero time means now.
func (r *WorkRequest) Due() time.Time {
	due := r.NotBefore
	if r.Delay > 0 {
		base := r.Trace.Submitted
		if base.IsZero() {
			base = r.Trace.Accepted
		}
		if d := base.Add(r.Delay.Std()); d.After(due) {
			due = d
		}
	}
	return due
}

// Validate checks the rules a request must follow before it is scheduled.
func (r *WorkRequest) Validate() error {
	switch {
	case r.Kind == "":
		return fmt.Errorf("%w: work request %q has no kind", ErrInvalid, r.ID)
	case !ValidToken(r.Kind):
		return fmt.Errorf("%w: kind %q is not a subject token", ErrInvalid, r.Kind)
	case r.Priority < 0 || r.Priority > MaxPriority:
		return fmt.Errorf("%w: priority %d outside 0-%d", ErrInvalid, r.Priority, MaxPriority)
	case r.Delay < 0:
		return fmt.Errorf("%w: negative delay %s", ErrInvalid, r.Delay.Std())
	case r.Cache.TTL < 0:
		return fmt.Errorf("%w: negative cache ttl %s", ErrInvalid, r.Cache.TTL.Std())
	case r.ReplyTo != "" && !ValidSubject(r.ReplyTo):
		return fmt.Errorf("%w: reply_to %q is not a subject to publish on", ErrInvalid, r.ReplyTo)
	case strings.HasPrefix(r.ReplyTo, "work.") || strings.HasPrefix(r.ReplyTo, "perf."):
		return fmt.Errorf("%w: reply_to %q is a perfpipe subject", ErrInvalid, r.ReplyTo)
	}
	return nil
}

// Batch is a group of ready work items of one kind, published by the
// batcher on BatchSubject(kind).
type Batch struct {
	Meta
	ID      string        `msgpack:"id" json:"id"`
	Kind    string        `msgpack:"kind" json:"kind"`
	Created time.Time     `msgpack:"created" json:"created"`
	Items   []WorkRequest `msgpack:"items" json:"items"`
}

// EventType implements Event.
func (*Batch) EventType() Type { return TypeBatch }

// Status is the outcome of a work item.
type Status string

// Result statuses.
const (
	// StatusOK means the handler finished the work.
	StatusOK Status = "ok"
	// StatusError means the handler failed the work; Error says why.
	StatusError Status = "error"
	// StatusDead means the item went to the dead-letter stream without
	// a handler result (unknown kind, bad input, past its deadline).
	StatusDead Status = "dead"
)

// Stages is the time a work item spent in each stage.
type Stages struct {
	// Queued is from submission to acceptance by the scheduler.
	Queued Duration `msgpack:"queued" json:"queued"`
	// Scheduled is from acceptance to release (delays and priority waits).
	Scheduled Duration `msgpack:"scheduled" json:"scheduled"`
	// Batched is from release to the batch being published.
	Batched Duration `msgpack:"batched" json:"batched"`
	// Wait is from the batch being published to the handler starting.
	Wait Duration `msgpack:"wait" json:"wait"`
	// Run is the handler's own time (zero for a cache hit).
	Run Duration `msgpack:"run" json:"run"`
	// EndToEnd is from submission to the result.
	EndToEnd Duration `msgpack:"end_to_end" json:"end_to_end"`
}

// Result is the outcome of one work item, published once per item on
// ResultSubject(kind) with the request ID as its Nats-Msg-Id.
type Result struct {
	Meta
	ID       string    `msgpack:"id" json:"id"`
	Kind     string    `msgpack:"kind" json:"kind"`
	Status   Status    `msgpack:"status" json:"status"`
	Output   Payload   `msgpack:"output,omitempty" json:"output,omitempty"`
	Error    string    `msgpack:"error,omitempty" json:"error,omitempty"`
	Cached   bool      `msgpack:"cached,omitempty" json:"cached,omitempty"`
	Attempts int       `msgpack:"attempts" json:"attempts"`
	Priority int       `msgpack:"priority,omitempty" json:"priority,omitempty"`
	Agent    string    `msgpack:"agent,omitempty" json:"agent,omitempty"`
	Started  time.Time `msgpack:"started,omitempty" json:"started,omitempty"`
	Finished time.Time `msgpack:"finished" json:"finished"`
	Stages   Stages    `msgpack:"stages" json:"stages"`
}

// EventType implements Event.
func (*Result) EventType() Type { return TypeResult }

// ResultMsgID is the Nats-Msg-Id of a request's result: one result per
// request ID (and replay) is stored within the de-duplication window,
// whichever service publishes it.
func ResultMsgID(req *WorkRequest) string { return "result-" + replayID(req) }

// SubmitMsgID is the Nats-Msg-Id of req on the WORK stream: its ID for the
// first attempt, "<id>.attempt<n>" for a retry, and ".replay<seq>" in
// between for a request replayed from dead letter seq. A retry or a replay
// is thus not dropped as a copy of the original, while a copy of the same
// retry or replay is.
func SubmitMsgID(req *WorkRequest) string {
	id := replayID(req)
	if req.Attempt <= 1 {
		return id
	}
	return id + ".attempt" + strconv.Itoa(req.Attempt)
}

// ReadyMsgID is the Nats-Msg-Id of req on the READY stream; it has the
// form of SubmitMsgID.
func ReadyMsgID(req *WorkRequest) string { return SubmitMsgID(req) }

func replayID(req *WorkRequest) string {
	if req.Replay == 0 {
		return req.ID
	}
	return req.ID + ".replay" + strconv.FormatUint(req.Replay, 10)
}

// DeadResult is the result of a request that went to the dead-letter
// stream without a handler result: status dead, the reason first in Error.
func DeadResult(req *WorkRequest, reason string, cause error, now time.Time) *Result {
	res := &Result{
		ID: req.ID, Kind: req.Kind, Status: StatusDead, Error: reason,
		Priority: req.Priority, Finished: now,
	}
	if cause != nil {
		res.Error = reason + ": " + cause.Error()
	}
	if !req.Trace.Submitted.IsZero() {
		res.Stages.EndToEnd = Duration(now.Sub(req.Trace.Submitted))
	}
	return res
}

// DeadLetter records a message that perfpipe gave up on, published on
// DeadSubject(kind). It keeps the original bytes so it can be replayed.
type DeadLetter struct {
	Meta
	// ID is the work request's ID when it could be read.
	ID   string `msgpack:"id,omitempty" json:"id,omitempty"`
	Kind string `msgpack:"kind" json:"kind"`
	// Subject is where the original message was published.
	Subject string `msgpack:"subject" json:"subject"`
	// Service is the service that gave up on it.
	Service string `msgpack:"service" json:"service"`
	// Reason is a short, readable cause such as "unknown kind".
	Reason string `msgpack:"reason" json:"reason"`
	// Error is the full error text.
	Error    string    `msgpack:"error,omitempty" json:"error,omitempty"`
	Attempts int       `msgpack:"attempts,omitempty" json:"attempts,omitempty"`
	Time     time.Time `msgpack:"time" json:"time"`
	// Data is the original message body.
	Data []byte `msgpack:"data,omitempty" json:"data,omitempty"`
}

// EventType implements Event.
func (*DeadLetter) EventType() Type { return TypeDeadLetter }
