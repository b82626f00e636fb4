package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/services/scheduler"
)

func TestRecurringUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"recurring alone", []string{"recurring"}, 0},
		{"unknown command", []string{"recurring", "pause"}, 2},
		{"add bad cron", []string{"recurring", "add", "--id", "x", "--cron", "* * *",
			"--kind", "sleep"}, 2},
		{"add every and cron", []string{"recurring", "add", "--id", "x", "--every", "1m",
			"--cron", "@daily", "--kind", "sleep"}, 2},
		{"add never fires", []string{"recurring", "add", "--id", "x", "--cron", "0 0 30 2 *",
			"--kind", "sleep"}, 2},
		{"add too often", []string{"recurring", "add", "--id", "x", "--every", "10ms",
			"--kind", "sleep"}, 2},
		{"add no kind", []string{"recurring", "add", "--id", "x", "--every", "1m"}, 2},
		{"add bad payload", []string{"recurring", "add", "--id", "x", "--every", "1m",
			"--kind", "sleep", "--payload", "{"}, 2},
		{"remove no id", []string{"recurring", "remove"}, 2},
		{"list bad output", []string{"recurring", "list", "--output", "xml"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(context.Background(), tt.args, &bytes.Buffer{}); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

// TestRecurringAddListRemove round-trips a definition through the CLI
// against an embedded server.
func TestRecurringAddListRemove(t *testing.T) {
	url := testenv.NATS(t)
	ctx := context.Background()
	cli := func(want int, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--nats-url", url)
		if got := run(ctx, args, &out); got != want {
			t.Fatalf("run(%q) = %d, want %d; output %s", args, got, want, out.String())
		}
		return out.String()
	}

	cli(0, "recurring", "add", "--id", "nightly", "--cron", "0 3 * * *", "--kind", "sleep",
		"--payload", `{"ms":5}`, "--priority", "2")
	if out := cli(0, "recurring", "add", "--id", "leap", "--cron", "0 0 29 2 *",
		"--kind", "sleep"); !strings.Contains(out, "first tick 20") {
		t.Errorf("add leap day: want a first tick in this century: %s", out)
	}
	cli(0, "recurring", "remove", "--id", "leap")
	cli(0, "recurring", "add", "--id", "often", "--every", "1m", "--kind", "http")
	cli(1, "recurring", "add", "--id", "often", "--every", "2m", "--kind", "http")
	cli(0, "recurring", "add", "--id", "often", "--every", "2m", "--kind", "http", "--replace")

	text := cli(0, "recurring", "list")
	for _, want := range []string{"nightly", "0 3 * * *", "often", "every 2m0s"} {
		if !strings.Contains(text, want) {
			t.Errorf("list output lacks %q:\n%s", want, text)
		}
	}
	var list []scheduler.RecurringInfo
	if err := json.Unmarshal([]byte(cli(0, "recurring", "list", "--output", "json")),
		&list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "nightly" || list[0].Work.Priority != 2 ||
		string(list[0].Work.Payload) != `{"ms":5}` {
		t.Errorf("list = %+v, want nightly (priority 2, payload) and often", list)
	}

	cli(0, "recurring", "remove", "--id", "nightly")
	cli(1, "recurring", "remove", "--id", "nightly")
	if text := cli(0, "recurring", "list"); strings.Contains(text, "nightly") {
		t.Errorf("list after remove still shows nightly:\n%s", text)
	}
}

// TestRecurringMissingBucket checks that list and remove leave a missing
// bucket missing, and that add creates it.
func TestRecurringMissingBucket(t *testing.T) {
	url := testenv.NATS(t)
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	const bucket = "nonexist_bucket"
	cli := func(args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--nats-url", url, "--bucket", bucket)
		err := recurringCommand(&out).ParseAndRun(ctx, args)
		return out.String(), err
	}

	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "list", args: []string{"list"},
			want: "no recurring definitions (bucket nonexist_bucket does not exist)\n"},
		{name: "list json", args: []string{"list", "--output", "json"}, want: "[]\n"},
		{name: "remove", args: []string{"remove", "--id", "x"},
			wantErr: "recurring x not found: bucket nonexist_bucket does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := cli(tt.args...)
			if got := errText(err); got != tt.wantErr || out != tt.want {
				t.Errorf("%q: output %q, error %q; want %q, %q", tt.args, out, got,
					tt.want, tt.wantErr)
			}
			if _, err := conn.JS.KeyValue(ctx, bucket); !errors.Is(err,
				jetstream.ErrBucketNotFound) {
				t.Errorf("bucket after %q: error = %v, want ErrBucketNotFound", tt.args, err)
			}
		})
	}

	if _, err := cli("add", "--id", "x", "--every", "1m", "--kind", "sleep"); err != nil {
		t.Fatalf("add: %v", err)
	}
	if out, err := cli("list"); err != nil || !strings.Contains(out, "every 1m0s") {
		t.Errorf("list after add = %q, %v; want x", out, err)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
