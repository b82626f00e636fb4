package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

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
	fs.StringVar(&f.file, "file", "", "JSON-lines file of work requests (replaces --kind/--payload/-n)")
	fs.BoolVar(&f.wait, "wait", true, "wait for the results and print a summary")
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long to wait for the results")
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
	reqs, err := f.requests()
	if err != nil {
		return err
	}

	conn, err := bus.Connect(ctx, g.natsURL, "perfpipe-submit", log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx); err != nil {
		return err
	}

	// Listen before publishing so that no result is missed.
	var results jetstream.ConsumeContext
	tally := newTally(reqs, f.output == "text" && term.IsTerminal(int(os.Stderr.Fd())))
	if f.wait {
		results, err = consumeResults(ctx, conn, tally)
		if err != nil {
			return err
		}
		defer results.Stop()
	}

	start := time.Now()
	dups, err := publishAll(ctx, conn, reqs, f.rate)
	if err != nil {
		return err
	}
	tally.duplicates(dups)
	if !f.wait {
		fmt.Fprintf(stdout, "submitted %d requests\n", len(reqs))
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

// requests builds the work requests from the flags or the file.
func (f *submitFlags) requests() ([]*events.WorkRequest, error) {
	if err := checkOutput(f.output); err != nil {
		return nil, err
	}
	if f.rate < 0 {
		return nil, fmt.Errorf("%w: --rate %v: want 0 (no limit) or more", errUsage, f.rate)
	}
	prefix := nuid.Next()
	if f.file != "" {
		return readRequests(f.file, f.kind, prefix)
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
	return reqs, nil
}

// readRequests reads one JSON work request per line; blank lines are
// skipped. A request without id or kind gets one.
func readRequests(path, kind, prefix string) ([]*events.WorkRequest, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	defer fh.Close()

	var reqs []*events.WorkRequest
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		r := &events.WorkRequest{}
		if err := events.Unmarshal(sc.Bytes(), r); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", errUsage, path, line, err)
		}
		if r.Kind == "" {
			r.Kind = kind
		}
		if r.ID == "" {
			r.ID = prefix + "-" + strconv.Itoa(line)
		}
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", errUsage, path, line, err)
		}
		reqs = append(reqs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no requests", errUsage, path)
	}
	return reqs, nil
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

// consumeResults follows the results stream from now on and feeds the
// tally.
func consumeResults(ctx context.Context, conn *bus.Conn, t *tally) (jetstream.ConsumeContext, error) {
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamResults, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultAll},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("follow results: %w", err)
	}
	return cons.Consume(func(m jetstream.Msg) {
		var r events.Result
		if events.Unmarshal(m.Data(), &r) == nil {
			t.add(&r)
		}
	})
}

// tally counts the results of one submission.
type tally struct {
	mu       sync.Mutex
	want     map[string]bool
	done     chan struct{}
	finished bool
	bar      *progressbar.ProgressBar

	results, ok, failed, dead, cached, dups int
	endToEnd, run                           quantile.Summary
	failures                                []Failure
	first                                   events.Payload // output of the first result
}

// maxFailures bounds the failures a summary lists.
const maxFailures = 10

// Failure is one result that was not ok.
type Failure struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// duplicates stops waiting for ids the stream already held.
func (t *tally) duplicates(ids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if t.want[id] {
			delete(t.want, id)
			t.dups++
		}
	}
	t.closeIfDone()
}

// closeIfDone signals the waiter once nothing is left to wait for; the
// caller holds t.mu.
func (t *tally) closeIfDone() {
	if len(t.want) == 0 && !t.finished {
		t.finished = true
		close(t.done)
	}
}

func newTally(reqs []*events.WorkRequest, showBar bool) *tally {
	t := &tally{want: make(map[string]bool, len(reqs)), done: make(chan struct{})}
	for _, r := range reqs {
		t.want[r.ID] = true
	}
	t.bar = progressbar.NewOptions(len(reqs),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetVisibility(showBar),
		progressbar.OptionSetDescription("results"),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
	return t
}

// add counts one result; results of other submissions are ignored.
func (t *tally) add(r *events.Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.want[r.ID] {
		return
	}
	delete(t.want, r.ID)
	t.results++
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
	_ = t.endToEnd.Add(ms(r.Stages.EndToEnd.Std()))
	_ = t.run.Add(ms(r.Stages.Run.Std()))
	_ = t.bar.Add(1)
	t.closeIfDone()
}

// Summary is what `perfpipe submit --output json` prints.
type Summary struct {
	Submitted int                `json:"submitted"`
	Results   int                `json:"results"`
	Missing   int                `json:"missing"`
	OK        int                `json:"ok"`
	Errors    int                `json:"errors"`
	Dead      int                `json:"dead"`
	Cached    int                `json:"cached"`
	Duplicate int                `json:"duplicate"`
	Seconds   float64            `json:"seconds"`
	EndToEnd  map[string]float64 `json:"end_to_end_ms"`
	Run       map[string]float64 `json:"run_ms"`
	Failures  []Failure          `json:"failures,omitempty"`
	// Output is the result's output when one request was submitted.
	Output events.Payload `json:"output,omitempty"`
}

func quantiles(s *quantile.Summary) map[string]float64 {
	return map[string]float64{
		"p50": s.Quantile(0.5), "p95": s.Quantile(0.95), "p99": s.Quantile(0.99), "max": s.Max(),
	}
}

// report prints the summary. It is called after the consumer stopped
// delivering or the wait timed out; missing results make it an error.
func (t *tally) report(w io.Writer, format string, elapsed time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.bar.Finish()
	s := Summary{
		Submitted: t.results + len(t.want) + t.dups, Results: t.results, Missing: len(t.want),
		OK: t.ok, Errors: t.failed, Dead: t.dead, Cached: t.cached, Duplicate: t.dups,
		Seconds: elapsed.Seconds(), EndToEnd: quantiles(&t.endToEnd), Run: quantiles(&t.run),
		Failures: t.failures,
	}
	if s.Submitted == 1 {
		s.Output = t.first
	}
	if format == "json" {
		if err := json.NewEncoder(w).Encode(s); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "submitted %d, results %d (ok %d, error %d, dead %d, cached %d) in %.2fs (%.1f/s)\n",
			s.Submitted, s.Results, s.OK, s.Errors, s.Dead, s.Cached, s.Seconds,
			float64(s.Results)/max(s.Seconds, 1e-9))
		if s.Duplicate > 0 {
			fmt.Fprintf(w, "%d already submitted within the de-duplication window (%s): not run again\n",
				s.Duplicate, bus.DedupWindow)
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
	if s.Missing > 0 {
		return fmt.Errorf("%d of %d results missing after the wait", s.Missing, s.Submitted)
	}
	if failed := s.Errors + s.Dead; failed > 0 {
		return fmt.Errorf("%d of %d results failed", failed, s.Results)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
