package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
	"golang.org/x/time/rate"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/pkg/events"
)

type submitFlags struct {
	kind     string
	payload  string
	n        int
	rate     float64
	priority int
	delay    time.Duration
	file     string
	wait     bool
	timeout  time.Duration
	output   string
}

func submitCommand(stdout io.Writer) *ffcli.Command {
	fs, g := newFlagSet("submit")
	f := &submitFlags{}
	fs.StringVar(&f.kind, "kind", "sleep", "kind of work (http, csv, sleep, or a registered kind)")
	fs.StringVar(&f.payload, "payload", `{"ms":5}`, "JSON payload of each request")
	fs.IntVar(&f.n, "n", 1, "number of requests")
	fs.Float64Var(&f.rate, "rate", 0, "requests per second; 0 means as fast as possible")
	fs.IntVar(&f.priority, "priority", 0, "priority 0-9, higher first")
	fs.DurationVar(&f.delay, "delay", 0, "hold each request back this long")
	fs.StringVar(&f.file, "file", "", "JSON-lines file of work requests (replaces "+
		"--kind/--payload/-n); a repeated id is submitted once")
	fs.BoolVar(&f.wait, "wait", true, "wait for the results and print a summary")
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute,
		"how long to wait for the results; more than 0 (checked only with --wait)")
	fs.StringVar(&f.output, "output", "text", "summary format: text or json")

	return &ffcli.Command{
		Name:       "submit",
		ShortUsage: "perfpipe submit [--kind K --payload JSON -n N | --file F] [flags]",
		ShortHelp:  "submit work and wait for its results",
		FlagSet:    fs,
		Options:    envOptions(),
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return runSubmit(ctx, stdout, g, f)
		},
	}
}

func runSubmit(ctx context.Context, stdout io.Writer, g *globals, f *submitFlags) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	sub, err := f.submission()
	if err != nil {
		return err
	}

	conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-submit", log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := sub.checkSizes(conn.NC.MaxPayload()); err != nil {
		return err
	}
	if err := conn.EnsureStreams(ctx); err != nil {
		return err
	}

	// Listen before publishing so that no result is missed.
	start := time.Now()
	tally := newTally(sub, f.output == "text" && term.IsTerminal(int(os.Stderr.Fd())))
	if f.wait {
		results, err := consumeResults(ctx, conn, sub, tally, start)
		if err != nil {
			return err
		}
		defer results.Stop()
	}

	dups, err := publishAll(ctx, conn, sub.reqs, f.rate)
	if err != nil {
		return err
	}
	tally.duplicates(dups)
	if !f.wait {
		fmt.Fprintf(stdout, "submitted %d requests\n", len(sub.reqs))
		return nil
	}

	waitCtx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	select {
	case <-tally.done:
	case <-waitCtx.Done():
	}
	return tally.report(stdout, f.output, time.Since(start))
}

// submission is what one run of submit publishes.
type submission struct {
	reqs []*events.WorkRequest
	// lines holds the file line of each request; nil without --file.
	lines []int
	// repeated counts file lines whose id an earlier line already had;
	// only the first of them is submitted.
	repeated int
	// givenIDs says some request carries an id from the file, which may
	// have run before this submission.
	givenIDs bool
}

// maxLineBytes bounds one line of --file: 64 MiB, the largest payload a
// NATS server accepts (its default max_pending). The server's own
// max_payload (1 MiB by default) is checked after connecting.
const maxLineBytes = 64 << 20

// submission builds the work requests from the flags or the file.
func (f *submitFlags) submission() (*submission, error) {
	if err := checkOutput(f.output); err != nil {
		return nil, err
	}
	if f.rate < 0 {
		return nil, fmt.Errorf("%w: --rate %v: want 0 (no limit) or more", errUsage, f.rate)
	}
	// Without waiting the timeout plays no part.
	if f.wait && f.timeout <= 0 {
		return nil, fmt.Errorf("%w: --timeout %s: want more than 0", errUsage, f.timeout)
	}
	prefix := nuid.Next()
	if f.file != "" {
		return readRequests(f.file, f.kind, prefix, maxLineBytes)
	}
	if f.n < 1 {
		return nil, fmt.Errorf("%w: -n %d: want at least 1", errUsage, f.n)
	}
	if !json.Valid([]byte(f.payload)) {
		return nil, fmt.Errorf("%w: --payload is not valid JSON: %s", errUsage, f.payload)
	}
	reqs := make([]*events.WorkRequest, f.n)
	for i := range reqs {
		reqs[i] = &events.WorkRequest{
			ID: prefix + "-" + strconv.Itoa(i), Kind: f.kind, Priority: f.priority,
			Delay: events.Duration(f.delay), Payload: events.Payload(f.payload),
		}
		if err := reqs[i].Validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	return &submission{reqs: reqs}, nil
}

// readRequests reads one JSON work request per line, of at most maxLine
// bytes; blank lines are skipped. A request without id or kind gets one.
// A line whose id an earlier line had is counted, not submitted again.
func readRequests(path, kind, prefix string, maxLine int) (*submission, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	defer fh.Close()

	sub := &submission{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(fh)
	// The scanner's limit is the larger of max and the buffer's capacity.
	sc.Buffer(make([]byte, 0, min(64<<10, maxLine)), maxLine)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		r, err := parseRequest(sc.Bytes(), kind, prefix, line)
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", errUsage, path, line, err)
		}
		if seen[r.ID] {
			sub.repeated++
			continue
		}
		seen[r.ID] = true
		sub.givenIDs = sub.givenIDs || !strings.HasPrefix(r.ID, prefix+"-")
		sub.reqs = append(sub.reqs, r)
		sub.lines = append(sub.lines, line)
	}
	return sub, readEnd(sc.Err(), path, line+1, maxLine, len(sub.reqs))
}

// parseRequest reads and checks the request on one line.
func parseRequest(data []byte, kind, prefix string, line int) (*events.WorkRequest, error) {
	if err := jsonObject(data); err != nil {
		return nil, fmt.Errorf("not a JSON work request: %w", err)
	}
	r := &events.WorkRequest{}
	if err := events.Unmarshal(data, r); err != nil {
		return nil, err
	}
	if r.Kind == "" {
		r.Kind = kind
	}
	if r.ID == "" {
		r.ID = prefix + "-" + strconv.Itoa(line)
	}
	return r, r.Validate()
}

// jsonObject says why a line is not a JSON object, or returns nil. A
// JSON-lines file holds JSON only: events.Unmarshal would read a line that
// is not JSON as msgpack and report a msgpack error.
func jsonObject(data []byte) error {
	if json.Valid(data) && events.IsJSON(data) {
		return nil
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	if !utf8.Valid(data) {
		return errors.New("invalid UTF-8")
	}
	return fmt.Errorf("want an object, got %.20s", bytes.TrimSpace(data))
}

// readEnd turns the end of reading a requests file into its error: a line
// too long (the next one, numbered line), a read error, or no request.
func readEnd(err error, path string, line, maxLine, n int) error {
	switch {
	case errors.Is(err, bufio.ErrTooLong):
		return fmt.Errorf("%w: %s line %d: longer than %d bytes, the limit of one request",
			errUsage, path, line, maxLine-1)
	case err != nil:
		return fmt.Errorf("read %s: %w", path, err)
	case n == 0:
		return fmt.Errorf("%w: %s holds no requests", errUsage, path)
	}
	return nil
}

// checkSizes refuses, before anything is published, a request whose
// message would exceed the server's max payload.
func (s *submission) checkSizes(maxPayload int64) error {
	for i, r := range s.reqs {
		msg, err := bus.Message(events.SubmitSubject(r.Kind), r, r.ID)
		if err != nil {
			return err
		}
		// Room for the submission time publishAll sets.
		size := int64(msg.Size()) + 16
		if size <= maxPayload {
			continue
		}
		where := "request " + r.ID
		if s.lines != nil {
			where = fmt.Sprintf("line %d (id %s)", s.lines[i], r.ID)
		}
		return fmt.Errorf("%w: %s: message of %d bytes exceeds the server's max payload "+
			"of %d bytes", errUsage, where, size, maxPayload)
	}
	return nil
}

// publishAll publishes reqs at most rate per second, asynchronously, and
// waits until the stream has acknowledged every one. It returns the IDs the
// stream already held: submitted within the de-duplication window, they do
// not run again.
func publishAll(ctx context.Context, conn *bus.Conn, reqs []*events.WorkRequest,
	perSec float64) ([]string, error) {
	limit := rate.NewLimiter(rate.Inf, 1)
	if perSec > 0 {
		limit = rate.NewLimiter(rate.Limit(perSec), 1)
	}
	futures := make([]jetstream.PubAckFuture, 0, len(reqs))
	for _, r := range reqs {
		if err := limit.Wait(ctx); err != nil {
			return nil, err
		}
		r.Trace.Submitted = time.Now()
		msg, err := bus.Message(events.SubmitSubject(r.Kind), r, r.ID)
		if err != nil {
			return nil, err
		}
		fut, err := conn.JS.PublishMsgAsync(msg)
		if err != nil {
			return nil, fmt.Errorf("publish %s: %w", msg.Subject, err)
		}
		futures = append(futures, fut)
	}
	var dups []string
	for i, fut := range futures {
		select {
		case ack := <-fut.Ok():
			if ack.Duplicate {
				dups = append(dups, reqs[i].ID)
			}
		case err := <-fut.Err():
			return nil, fmt.Errorf("publish %s: %w", fut.Msg().Subject, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return dups, nil
}

// consumeResults follows the results of the submitted kinds and feeds
// the tally. When the file gave ids, which may have run before, it starts
// one de-duplication window before now: a request the stream or the
// pipeline takes for a copy runs no more, and its result, if any, was
// published within that window.
func consumeResults(ctx context.Context, conn *bus.Conn, sub *submission, t *tally,
	start time.Time) (jetstream.ConsumeContext, error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: resultSubjects(sub.reqs),
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	}
	if sub.givenIDs {
		from := start.Add(-bus.DedupWindow)
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &from
	}
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamResults, cfg)
	if err != nil {
		return nil, fmt.Errorf("follow results: %w", err)
	}
	return cons.Consume(func(m jetstream.Msg) {
		if !t.wants(m.Headers().Get(jetstream.MsgIDHeader)) {
			return
		}
		var r events.Result
		if events.Unmarshal(m.Data(), &r) != nil {
			return
		}
		earlier := false
		if md, err := m.Metadata(); err == nil {
			earlier = md.Timestamp.Before(start)
		}
		t.add(&r, earlier)
	})
}

// maxKindFilters bounds the subject filters of the results consumer; with
// more kinds than this it follows every result.
const maxKindFilters = 64

// resultSubjects are the result subjects of the kinds of reqs.
func resultSubjects(reqs []*events.WorkRequest) []string {
	seen := map[string]bool{}
	var subjects []string
	for _, r := range reqs {
		subj := events.ResultSubject(r.Kind)
		if !seen[subj] {
			seen[subj] = true
			subjects = append(subjects, subj)
		}
	}
	if len(subjects) > maxKindFilters {
		return []string{events.ResultAll}
	}
	return subjects
}

// tally counts the results of one submission.
type tally struct {
	mu        sync.Mutex
	want      map[string]bool
	submitted int
	repeated  int
	done      chan struct{}
	finished  bool
	bar       *progressbar.ProgressBar

	results, ok, failed, dead, cached, earlier int
	dups                                       map[string]bool // ids the stream already held
	endToEnd, run                              quantile.Summary
	failures                                   []Failure
	first                                      events.Payload // output of the first result
}

// maxFailures bounds the failures a summary lists.
const maxFailures = 10

// Failure is one result that was not ok.
type Failure struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// duplicates counts the ids the stream already held: submitted within the
// de-duplication window, they do not run again, and their result is the
// one already on the results stream or still to come from that run.
func (t *tally) duplicates(ids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		t.dups[id] = true
	}
}

// closeIfDone signals the waiter once nothing is left to wait for; the
// caller holds t.mu.
func (t *tally) closeIfDone() {
	if len(t.want) == 0 && !t.finished {
		t.finished = true
		close(t.done)
	}
}

func newTally(sub *submission, showBar bool) *tally {
	t := &tally{
		want: make(map[string]bool, len(sub.reqs)), done: make(chan struct{}),
		submitted: len(sub.reqs), repeated: sub.repeated, dups: map[string]bool{},
	}
	for _, r := range sub.reqs {
		t.want[r.ID] = true
	}
	t.bar = progressbar.NewOptions(len(sub.reqs),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetVisibility(showBar),
		progressbar.OptionSetDescription("results"),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
	return t
}

// wants reports whether a result with this Nats-Msg-Id may be one of the
// submission's, so that the results of others are skipped undecoded. A
// result without perfpipe's id, or of a replay, is decoded to see.
func (t *tally) wants(msgID string) bool {
	id, ok := strings.CutPrefix(msgID, "result-")
	if !ok || strings.Contains(id, ".replay") {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want[id]
}

// add counts one result; results of other submissions are ignored.
// earlier marks a result published before this submission started.
func (t *tally) add(r *events.Result, earlier bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.want[r.ID] {
		return
	}
	delete(t.want, r.ID)
	t.results++
	if earlier {
		t.earlier++
	}
	t.count(r)
	_ = t.endToEnd.Add(ms(r.Stages.EndToEnd.Std()))
	_ = t.run.Add(ms(r.Stages.Run.Std()))
	_ = t.bar.Add(1)
	t.closeIfDone()
}

// count adds r to the counts by status; the caller holds t.mu.
func (t *tally) count(r *events.Result) {
	switch r.Status {
	case events.StatusOK:
		t.ok++
	case events.StatusDead:
		t.dead++
	default:
		t.failed++
	}
	if t.results == 1 {
		t.first = r.Output
	}
	if r.Status != events.StatusOK && len(t.failures) < maxFailures {
		t.failures = append(t.failures, Failure{ID: r.ID, Status: string(r.Status), Error: r.Error})
	}
	if r.Cached {
		t.cached++
	}
}

// Summary is what `perfpipe submit --output json` prints. Every result
// that is not ok has its entry on the dead-letter stream: Errors ran and
// failed for good (a permanent failure, or transient ones until its
// attempts ran out), Dead never ran (unknown kind, invalid, past its
// deadline); DeadLettered is their sum.
type Summary struct {
	Submitted    int `json:"submitted"`
	Results      int `json:"results"`
	Missing      int `json:"missing"`
	OK           int `json:"ok"`
	Errors       int `json:"errors"`
	Dead         int `json:"dead"`
	DeadLettered int `json:"dead_lettered"`
	Cached       int `json:"cached"`
	// Duplicate counts requests the stream already held (submitted within
	// the de-duplication window): not run again.
	Duplicate int `json:"duplicate"`
	// AlreadyDone counts results published before this run started.
	AlreadyDone int `json:"already_done"`
	// Repeated counts --file lines whose id an earlier line had.
	Repeated int                `json:"repeated"`
	Seconds  float64            `json:"seconds"`
	EndToEnd map[string]float64 `json:"end_to_end_ms"`
	Run      map[string]float64 `json:"run_ms"`
	Failures []Failure          `json:"failures,omitempty"`
	// Output is the result's output when one request was submitted.
	Output events.Payload `json:"output,omitempty"`
}

func quantiles(s *quantile.Summary) map[string]float64 {
	return map[string]float64{
		"p50": s.Quantile(0.5), "p95": s.Quantile(0.95), "p99": s.Quantile(0.99), "max": s.Max(),
	}
}

// summary is the tally as a Summary; the caller holds t.mu.
func (t *tally) summary(elapsed time.Duration) Summary {
	s := Summary{
		Submitted: t.submitted, Results: t.results, Missing: len(t.want),
		OK: t.ok, Errors: t.failed, Dead: t.dead, DeadLettered: t.failed + t.dead,
		Cached: t.cached, Duplicate: len(t.dups), AlreadyDone: t.earlier, Repeated: t.repeated,
		Seconds: elapsed.Seconds(), EndToEnd: quantiles(&t.endToEnd), Run: quantiles(&t.run),
		Failures: t.failures,
	}
	if s.Submitted == 1 {
		s.Output = t.first
	}
	return s
}

// report prints the summary. It is called after the consumer stopped
// delivering or the wait timed out; missing results make it an error.
func (t *tally) report(w io.Writer, format string, elapsed time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.bar.Finish()
	s := t.summary(elapsed)
	if format == "json" {
		if err := json.NewEncoder(w).Encode(s); err != nil {
			return err
		}
	} else {
		printSummary(w, &s)
	}
	if s.Missing > 0 {
		return t.missingError(&s)
	}
	if failed := s.Errors + s.Dead; failed > 0 {
		return fmt.Errorf("%d of %d results failed", failed, s.Results)
	}
	return nil
}

// missingError says how many results did not come, and how many of those
// belong to requests submitted before this run; the caller holds t.mu.
func (t *tally) missingError(s *Summary) error {
	earlier := 0
	for id := range t.want {
		if t.dups[id] {
			earlier++
		}
	}
	err := fmt.Errorf("%d of %d results missing after the wait", s.Missing, s.Submitted)
	if earlier > 0 {
		err = fmt.Errorf("%w (%d of them submitted before this run, within the "+
			"de-duplication window, and still without a result)", err, earlier)
	}
	return err
}

// printSummary writes s as text.
func printSummary(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "submitted %d, results %d (ok %d, error (final) %d, dead (never ran) %d, "+
		"cached %d) in %.2fs (%.1f/s)\n", s.Submitted, s.Results, s.OK, s.Errors, s.Dead,
		s.Cached, s.Seconds, float64(s.Results)/max(s.Seconds, 1e-9))
	if s.DeadLettered > 0 {
		fmt.Fprintf(w, "dead-lettered %d: see perfpipe dead list\n", s.DeadLettered)
	}
	if s.Repeated > 0 {
		fmt.Fprintf(w, "repeated in input: %d (lines with an id an earlier line had; "+
			"submitted once)\n", s.Repeated)
	}
	if s.Duplicate > 0 {
		fmt.Fprintf(w, "%d already submitted within the de-duplication window (%s): "+
			"not run again\n", s.Duplicate, bus.DedupWindow)
	}
	if s.AlreadyDone > 0 {
		fmt.Fprintf(w, "%d already done: result published before this run\n", s.AlreadyDone)
	}
	for _, f := range s.Failures {
		fmt.Fprintf(w, "%s  %s: %s\n", f.Status, f.ID, f.Error)
	}
	if len(s.Output) > 0 {
		var pretty bytes.Buffer
		if json.Indent(&pretty, s.Output, "", "  ") == nil {
			fmt.Fprintf(w, "output:\n%s\n", pretty.Bytes())
		}
	}
	for _, row := range []struct {
		name string
		q    map[string]float64
	}{{"end to end", s.EndToEnd}, {"run", s.Run}} {
		fmt.Fprintf(w, "%-10s  p50 %.2fms  p95 %.2fms  p99 %.2fms  max %.2fms\n",
			row.name, row.q["p50"], row.q["p95"], row.q["p99"], row.q["max"])
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
