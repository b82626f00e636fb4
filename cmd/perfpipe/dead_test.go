package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/deadletter"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestDeadUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"dead alone", []string{"dead"}, 0},
		{"unknown dead command", []string{"dead", "purge"}, 2},
		{"list bad output", []string{"dead", "list", "--output", "xml"}, 2},
		{"list bad since", []string{"dead", "list", "--since", "yesterday"}, 2},
		{"list negative since", []string{"dead", "list", "--since", "-1h"}, 2},
		{"list bad until", []string{"dead", "list", "--until", "2025-13-01"}, 2},
		{"list negative limit", []string{"dead", "list", "--limit", "-1"}, 2},
		{"list argument", []string{"dead", "list", "extra"}, 2},
		{"list unknown flag", []string{"dead", "list", "--nope"}, 2},
		{"replay without filter", []string{"dead", "replay"}, 2},
		{"replay limit only", []string{"dead", "replay", "--limit", "5"}, 2},
		{"replay bad since", []string{"dead", "replay", "--since", "soon"}, 2},
		{"replay bad output", []string{"dead", "replay", "--all", "--output", "xml"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(context.Background(), tt.args, &bytes.Buffer{}); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"90m", now.Add(-90 * time.Minute)},
		{"0s", now},
		{"2025-04-30T08:00:00Z", time.Date(2025, 4, 30, 8, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		got, err := parseWhen("--since", tt.in, now)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestListFlag(t *testing.T) {
	var l listFlag
	for _, s := range []string{"a", "b, c", ",d,"} {
		_ = l.Set(s)
	}
	if got, want := l.String(), "a,b,c,d"; got != want {
		t.Errorf("ids = %q, want %q", got, want)
	}
}

// TestDeadListReplay lists and replays dead letters through the CLI
// against an embedded server.
func TestDeadListReplay(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	for _, dl := range []*events.DeadLetter{
		deadRequest(t, "job-1", "sleep", "scheduler", "unknown kind"),
		deadRequest(t, "job-2", "http", "agent", "attempts exhausted"),
		{ID: "job-3", Kind: "csv", Service: "agent", Reason: "unknown kind",
			Error: "no handler\nfor csv " + strings.Repeat("x", 100)},
	} {
		if err := conn.DeadLetter(ctx, dl); err != nil {
			t.Fatalf("dead letter: %v", err)
		}
	}
	cli := func(want int, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--nats-url", url)
		if got := run(ctx, args, &out); got != want {
			t.Fatalf("run(%q) = %d, want %d; output:\n%s", args, got, want, out.String())
		}
		return out.String()
	}

	out := cli(0, "dead", "list")
	for _, want := range []string{"SEQ", "ATTEMPTS", "job-1", "job-2", "job-3",
		"attempts exhausted", "no handler for csv xxx"} {
		if !strings.Contains(out, want) {
			t.Errorf("dead list output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, strings.Repeat("x", 60)) {
		t.Errorf("dead list did not trim the error:\n%s", out)
	}

	var entries []deadletter.Entry
	out = cli(0, "dead", "list", "--reason", "unknown kind", "--output", "json")
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("dead list json: %v\n%s", err, out)
	}
	if len(entries) != 2 || entries[0].DeadLetter.ID != "job-1" || entries[1].Seq != 3 {
		t.Errorf("entries with reason unknown kind = %+v", entries)
	}
	if out := cli(0, "dead", "list", "--kind", "none"); !strings.Contains(out, "no dead letters") {
		t.Errorf("dead list of no match = %q", out)
	}
	if out := cli(0, "dead", "list", "--limit", "1"); !strings.Contains(out, "first 1 shown") {
		t.Errorf("dead list --limit 1 does not say it was cut:\n%s", out)
	}

	out = cli(0, "dead", "replay", "--id", "job-1,job-3", "--dry-run")
	if !strings.Contains(out, "would replay to work.submit.sleep as job-1.replay1 "+
		"(unless published within the last 2m0s)") ||
		!strings.Contains(out, "would replay 1 (unless published within the last 2m0s), "+
			"superseded 0, not replayable 1") {
		t.Errorf("dry run output:\n%s", out)
	}
	out = cli(0, "dead", "replay", "--id", "job-1", "--id", "job-3")
	if !strings.Contains(out, "seq 1 job-1: replayed to work.submit.sleep as job-1.replay1") ||
		!strings.Contains(out, "seq 3 job-3: not replayable: no original message") ||
		!strings.Contains(out, "replayed 1, duplicate 0, superseded 0, not replayable 1, failed 0") {
		t.Errorf("replay output:\n%s", out)
	}
	// Replayed by the run before, job-1 is a duplicate: --delete keeps it.
	out = cli(0, "dead", "replay", "--id", "job-1", "--delete")
	if !strings.Contains(out, "seq 1 job-1: duplicate") || strings.Contains(out, "(deleted)") ||
		!strings.Contains(out, "kept 1 duplicates") {
		t.Errorf("second replay output:\n%s", out)
	}
	out = cli(0, "dead", "replay", "--id", "job-2", "--delete")
	if !strings.Contains(out, "seq 2 job-2: replayed to work.submit.http as job-2.replay2 "+
		"(deleted)") || strings.Contains(out, "kept") {
		t.Errorf("replay --delete output:\n%s", out)
	}
	cli(1, "dead", "replay", "--id", "job-2")

	// Without the work stream the publish fails: exit 1.
	if err := conn.JS.DeleteStream(ctx, events.StreamWork); err != nil {
		t.Fatal(err)
	}
	out = cli(1, "dead", "replay", "--all")
	if !strings.Contains(out, "seq 1 job-1: failed") || !strings.Contains(out, "failed 1") {
		t.Errorf("failed replay output:\n%s", out)
	}
}

// deadRequest is a dead letter holding a work request.
func deadRequest(t *testing.T, id, kind, service, reason string) *events.DeadLetter {
	t.Helper()
	return deadReplay(t, id, kind, service, reason, 0)
}

// deadReplay is a dead letter holding a work request replayed from dead
// letter seq replay (zero: not a replay).
func deadReplay(t *testing.T, id, kind, service, reason string,
	replay uint64) *events.DeadLetter {
	t.Helper()
	req := &events.WorkRequest{ID: id, Kind: kind, Attempt: 2, Replay: replay}
	data, err := events.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return &events.DeadLetter{
		ID: id, Kind: kind, Subject: events.SubmitSubject(kind), Service: service,
		Reason: reason, Error: "gave up on " + id, Attempts: 2, Data: data,
	}
}

// TestDeadReplaySuperseded replays, through the CLI, requests that failed
// again after a replay: one publish per request, the later dead letters
// superseded, and nothing published by a second run.
func TestDeadReplaySuperseded(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	for _, dl := range []*events.DeadLetter{
		deadRequest(t, "job-1", "http", "agent", "PERMANENT failure"),
		deadRequest(t, "job-2", "http", "agent", "permanent failure"),
		deadReplay(t, "job-1", "http", "agent", "permanent failure", 1),
		deadReplay(t, "job-2", "http", "agent", "permanent failure", 2),
	} {
		if err := conn.DeadLetter(ctx, dl); err != nil {
			t.Fatalf("dead letter: %v", err)
		}
	}
	replay := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append([]string{"dead", "replay", "--reason", "permanent", "--kind", "http",
			"--nats-url", url}, args...)
		if got := run(ctx, args, &out); got != 0 {
			t.Fatalf("run(%q) = %d, want 0; output:\n%s", args, got, out.String())
		}
		return out.String()
	}

	tests := []struct {
		name  string
		args  []string
		want  []string
		lacks []string
	}{
		{"dry run", []string{"--dry-run"}, []string{
			"seq 1 job-1: would replay to work.submit.http as job-1.replay1 " +
				"(unless published within the last 2m0s)",
			"seq 3 job-1: superseded by seq 1",
			"would replay 2 (unless published within the last 2m0s), superseded 2, " +
				"not replayable 0, of 4 dead letters",
		}, nil},
		{"limit counts requests", []string{"--dry-run", "--limit", "1"}, []string{
			"seq 3 job-1: superseded by seq 1",
			"would replay 1 (unless published within the last 2m0s), superseded 1, " +
				"not replayable 0, of 2 dead letters",
			"first 1 requests only",
		}, nil},
		{"first run", nil, []string{
			"seq 2 job-2: replayed to work.submit.http as job-2.replay2",
			"seq 4 job-2: superseded by seq 2",
			"replayed 2, duplicate 0, superseded 2, not replayable 0, failed 0, of 4",
		}, nil},
		{"second run", nil, []string{
			"seq 1 job-1: duplicate: job-1.replay1",
			"replayed 0, duplicate 2, superseded 2, not replayable 0, failed 0, of 4",
		}, nil},
		{"one id", []string{"--id", "job-1"}, []string{
			"replayed 0, duplicate 1, superseded 1, not replayable 0, failed 0, of 2",
		}, nil},
		// Nothing replayed, nothing deleted: seq 3, the failure of the
		// first run's replay, stays on record.
		{"delete within the window", []string{"--id", "job-1", "--delete"}, []string{
			"seq 1 job-1: duplicate: job-1.replay1",
			"seq 3 job-1: superseded by seq 1",
			"replayed 0, duplicate 1, superseded 1, not replayable 0, failed 0, of 2",
			"kept 1 duplicates and the dead letters they supersede",
		}, []string{"(deleted)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := replay(tt.args...)
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			for _, bad := range tt.lacks {
				if strings.Contains(out, bad) {
					t.Errorf("output has %q:\n%s", bad, out)
				}
			}
		})
	}

	var rep replayReport
	out := replay("--output", "json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("replay json: %v\n%s", err, out)
	}
	want := replayCounts{Duplicate: 2, Superseded: 2, DeadLetters: 4}
	if rep.Counts != want || len(rep.Outcomes) != 4 || rep.Outcomes[2].SupersededBy != 1 {
		t.Errorf("json report = %+v, want counts %+v and seq 3 superseded by 1", rep, want)
	}
	checkWorkStream(t, conn, 2)
}

// checkWorkStream checks how many requests the work stream holds.
func checkWorkStream(t *testing.T, conn *bus.Conn, want uint64) {
	t.Helper()
	ctx := context.Background()
	stream, err := conn.JS.Stream(ctx, events.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != want {
		t.Errorf("%s holds %d messages, want %d", events.StreamWork, info.State.Msgs, want)
	}
}
