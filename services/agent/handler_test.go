package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestPermanent(t *testing.T) {
	base := errors.New("bad input")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", base, false},
		{"marked", Permanent(base), true},
		{"wrapped after marking", fmt.Errorf("op: %w", Permanent(base)), true},
		{"formatted", Permanentf("op: %w", base), true},
		{"context", context.Canceled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsPermanent(tt.err); got != tt.want {
				t.Errorf("IsPermanent(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	if err := Permanent(base); !errors.Is(err, base) || err.Error() != "bad input" {
		t.Errorf("Permanent(base) = %q, want it to wrap base and read the same", err)
	}
}

func TestRegistry(t *testing.T) {
	reg := NewRegistry()
	noop := HandlerFunc(func(context.Context, *events.WorkRequest) (events.Payload, error) {
		return nil, nil
	})
	if err := reg.Register("report", noop, Options{CacheTTL: time.Minute}); err != nil {
		t.Fatalf("Register(report) error = %v", err)
	}

	tests := []struct {
		name string
		kind string
		h    Handler
		want error
	}{
		{"taken", "report", noop, ErrKindRegistered},
		{"dot", "a.b", noop, ErrBadKind},
		{"empty", "", noop, ErrBadKind},
		{"wildcard", "*", noop, ErrBadKind},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := reg.Register(tt.kind, tt.h, Options{}); !errors.Is(err, tt.want) {
				t.Errorf("Register(%q) error = %v, want %v", tt.kind, err, tt.want)
			}
		})
	}
	if err := reg.Register("nil", nil, Options{}); err == nil {
		t.Error("Register(nil handler) error = nil, want one")
	}
	e, ok := reg.lookup("report")
	if !ok || e.opts.CacheTTL != time.Minute {
		t.Errorf("lookup(report) = %+v, %v; want ttl 1m", e, ok)
	}
}

func TestNewBuiltins(t *testing.T) {
	reg, err := NewBuiltins(Config{})
	if err != nil {
		t.Fatalf("NewBuiltins() error = %v", err)
	}
	if got, want := reg.Kinds(), []string{"csv", "http", "sleep"}; !slices.Equal(got, want) {
		t.Errorf("Kinds() = %v, want %v", got, want)
	}
	ttls := map[string]time.Duration{"csv": DefaultCSVCacheTTL, "http": 0, "sleep": 0}
	for kind, want := range ttls {
		if e, _ := reg.lookup(kind); e.opts.CacheTTL != want {
			t.Errorf("%s cache ttl = %s, want %s", kind, e.opts.CacheTTL, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // in the error; empty for valid
	}{
		{"zero", Config{}, ""},
		{"defaults", Config{}.withDefaults(), ""},
		{"negative workers", Config{Workers: -1}, "workers"},
		{"bad durable", Config{Durable: "a.b"}, "durable"},
		{"short ack wait", Config{AckWait: time.Millisecond}, "ack wait"},
		{"retry max below initial", Config{RetryInitial: time.Second,
			RetryMax: time.Millisecond}, "retry max"},
		{"negative max body", Config{HTTP: HTTPConfig{MaxBody: -1}}, "max body"},
		{"csv cache off", Config{CSV: CSVConfig{CacheTTL: -1}}, ""},
		{"kind concurrency", Config{KindConcurrency: map[string]int{"http": 2, "csv": 0}}, ""},
		{"negative kind concurrency", Config{KindConcurrency: map[string]int{"http": -1}},
			"kind concurrency"},
		{"bad kind", Config{KindConcurrency: map[string]int{"a.b": 1}}, "kind concurrency"},
		{"no bytes cap", Config{MaxInFlightBytes: -1}, ""},
		{"kind retry", Config{KindRetry: map[string]RetryPolicy{
			"http": {MaxAttempts: 5, Initial: time.Second, Jitter: -1}}}, ""},
		{"kind retry jitter", Config{KindRetry: map[string]RetryPolicy{
			"http": {Jitter: 1.5}}}, "kind retry http"},
		{"kind retry max below initial", Config{KindRetry: map[string]RetryPolicy{
			"http": {Initial: time.Second, Max: time.Millisecond}}}, "kind retry http"},
		{"kind retry bad kind", Config{KindRetry: map[string]RetryPolicy{
			"a b": {MaxAttempts: 1}}}, "kind retry"},
		{"low cpu above high", Config{Admission: AdmissionConfig{LowCPU: 95}}, "cpu watermarks"},
		{"high mem over 100", Config{Admission: AdmissionConfig{HighMem: 101}}, "mem watermarks"},
		{"negative max age", Config{Admission: AdmissionConfig{MaxAge: -1}}, "max age"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" && err != nil {
				t.Errorf("Validate() error = %v, want nil", err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate() error = %v, want one with %q", err, tt.want)
			}
		})
	}
}

// testService is a Service with just what invoke and result need.
func testService(cfg Config) *Service {
	cfg = cfg.withDefaults()
	return &Service{
		cfg:  cfg,
		log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		name: "test-agent",
	}
}

func TestInvoke(t *testing.T) {
	errFlaky := errors.New("flaky")
	tests := []struct {
		name         string
		handle       func(ctx context.Context, attempt int) error
		wantAttempts int
		wantErr      bool
		wantReason   string
	}{
		{"ok", func(context.Context, int) error { return nil }, 1, false, ""},
		// Retries are submitted for later by the caller, not run here.
		{"transient", func(context.Context, int) error { return errFlaky },
			1, true, ""},
		{"permanent", func(context.Context, int) error { return Permanent(errFlaky) },
			1, true, reasonPermanent},
		{"panic", func(context.Context, int) error { panic("boom") },
			1, true, reasonPanic},
		{"timeout", func(ctx context.Context, _ int) error {
			<-ctx.Done()
			return ctx.Err()
		}, 1, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testService(Config{RetryInitial: time.Millisecond,
				RetryMax: 5 * time.Millisecond, ItemTimeout: 200 * time.Millisecond})
			h := HandlerFunc(func(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
				if err := tt.handle(ctx, req.Attempt); err != nil {
					return events.Payload(`{"partial":true}`), err
				}
				return events.Payload(`{"ok":true}`), nil
			})

			r := s.invoke(context.Background(), h, &events.WorkRequest{ID: "i1", Kind: "t"})
			if r.attempts != tt.wantAttempts || (r.err != nil) != tt.wantErr {
				t.Fatalf("invoke() = %d attempts, error %v; want %d attempts, error %v",
					r.attempts, r.err, tt.wantAttempts, tt.wantErr)
			}
			if tt.wantErr {
				if got := failureReason(r.err); got != tt.wantReason {
					t.Errorf("failureReason(%v) = %q, want %q", r.err, got, tt.wantReason)
				}
				if r.output != nil {
					t.Errorf("output of a failure = %s, want none", r.output)
				}
			}
			if r.took <= 0 || r.started.IsZero() {
				t.Errorf("took %s from %s, want a positive time", r.took, r.started)
			}
		})
	}
}

func TestErrorTextHidesPanicStack(t *testing.T) {
	s := testService(Config{})
	h := HandlerFunc(func(context.Context, *events.WorkRequest) (events.Payload, error) {
		panic("boom")
	})
	r := s.invoke(context.Background(), h, &events.WorkRequest{ID: "p1"})
	if got, want := errorText(r.err), "handler panic: boom"; got != want {
		t.Errorf("errorText() = %q, want %q", got, want)
	}
}

func TestResultStages(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ms := func(n int) events.Duration { return events.Duration(time.Duration(n) * time.Millisecond) }

	tests := []struct {
		name  string
		trace events.Trace
		want  events.Stages
	}{
		{"full trace", events.Trace{Submitted: at(0), Accepted: at(10), Released: at(30),
			Batched: at(60)},
			events.Stages{Queued: ms(10), Scheduled: ms(20), Batched: ms(30), Wait: ms(40),
				Run: ms(5), EndToEnd: ms(105)}},
		{"no scheduler times", events.Trace{Submitted: at(0), Batched: at(60)},
			events.Stages{Wait: ms(40), Run: ms(5), EndToEnd: ms(105)}},
		{"empty trace", events.Trace{}, events.Stages{Run: ms(5)}},
		{"clock skew", events.Trace{Submitted: at(200), Batched: at(150)},
			events.Stages{Run: ms(5)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := stages(tt.trace, at(100), at(105), 5*time.Millisecond)
			if got != tt.want {
				t.Errorf("stages() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestResultHash(t *testing.T) {
	a, err := ResultHash("csv", events.Payload(`{"file": "A.csv", "values": ["Close"]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		kind    string
		payload string
		same    bool
	}{
		{"reordered and spaced", "csv", `{"values":["Close"],"file":"A.csv"}`, true},
		{"other kind", "http", `{"file": "A.csv", "values": ["Close"]}`, false},
		{"other value", "csv", `{"file": "B.csv", "values": ["Close"]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ResultHash(tt.kind, events.Payload(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			if (a == b) != tt.same || len(b) != 32 {
				t.Errorf("hash %s vs %s: same = %v, want %v (and 32 digits)",
					b, a, a == b, tt.same)
			}
		})
	}
}
