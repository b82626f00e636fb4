package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// startUp runs `perfpipe up` in-process on free ports until the test ends
// and returns its NATS URL.
func startUp(t *testing.T, flags ...string) string {
	t.Helper()
	natsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	t.Setenv("PERFPIPE_LOG_LEVEL", "warn")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var upCode int
	go func() {
		defer wg.Done()
		args := append([]string{"up", "--listen", natsAddr, "--http-addr", httpAddr,
			"--store-dir", t.TempDir(), "--services", "scheduler,batcher,agent"}, flags...)
		upCode = run(ctx, args, &bytes.Buffer{})
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if upCode != 0 {
			t.Errorf("up exited %d after cancel, want 0", upCode)
		}
	})
	testenv.WaitFor(t, 20*time.Second, "perfpipe up to serve /healthz", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return "nats://" + natsAddr
}

// submitFile writes lines to a file, submits it with --output json and
// returns the exit code and the summary.
func submitFile(t *testing.T, url string, lines ...string) (int, Summary) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "reqs.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code := run(context.Background(), []string{"submit", "--nats-url", url, "--file", file,
		"--output", "json", "--timeout", "20s"}, &out)
	var sum Summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatalf("summary: %v: %q", err, out.String())
	}
	return code, sum
}

// TestSubmitKnownIDs covers ids the file repeats, ids another client
// published first, and a rerun within the de-duplication window: each
// gets its one result, none is waited for in vain.
func TestSubmitKnownIDs(t *testing.T) {
	url := startUp(t, "--attempts", "2")
	sleep := func(id string) string {
		return `{"id":"` + id + `","kind":"sleep","payload":{"ms":1}}`
	}

	tests := []struct {
		name  string
		lines []string
		// before publishes the lines' ids another way first.
		before bool
		want   Summary
	}{
		{name: "two identical lines", lines: []string{sleep("twice"), sleep("twice")},
			want: Summary{Submitted: 1, Results: 1, OK: 1, Repeated: 1}},
		{name: "repeated among others",
			lines: []string{sleep("r-1"), sleep("r-2"), sleep("r-1")},
			want:  Summary{Submitted: 2, Results: 2, OK: 2, Repeated: 1}},
		{name: "rerun within the window", lines: []string{sleep("r-1"), sleep("r-2")},
			want: Summary{Submitted: 2, Results: 2, OK: 2, Duplicate: 2, AlreadyDone: 2}},
		{name: "published by another client", lines: []string{sleep("dup-5")}, before: true,
			want: Summary{Submitted: 1, Results: 1, OK: 1, AlreadyDone: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before {
				publishWithoutMsgID(t, url, tt.lines)
			}
			start := time.Now()
			code, got := submitFile(t, url, tt.lines...)
			if took := time.Since(start); code != 0 || took > 10*time.Second {
				t.Errorf("submit exited %d after %s; want 0 at once", code, took)
			}
			if got.Submitted != tt.want.Submitted || got.Results != tt.want.Results ||
				got.OK != tt.want.OK || got.Missing != 0 || got.Repeated != tt.want.Repeated ||
				got.Duplicate != tt.want.Duplicate || got.AlreadyDone != tt.want.AlreadyDone {
				t.Errorf("summary = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// publishWithoutMsgID publishes each JSON line as `nats pub` does, with no
// Nats-Msg-Id, and waits for their results to be published.
func publishWithoutMsgID(t *testing.T, url string, lines []string) {
	t.Helper()
	conn := testenv.Conn(t, url)
	ctx := context.Background()
	results := func() uint64 {
		st, err := conn.JS.Stream(ctx, events.StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().State.Msgs
	}
	before := results()
	for _, l := range lines {
		if _, err := conn.JS.Publish(ctx, events.SubmitSubject("sleep"), []byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "results of the plain publishes", func() bool {
		return results() >= before+uint64(len(lines))
	})
}

// TestSubmitDeadLettered checks that the summary's counts of failed items
// match the entries `perfpipe dead list` shows for them.
func TestSubmitDeadLettered(t *testing.T) {
	url := startUp(t, "--attempts", "2")
	lines := []string{
		`{"id":"perm","kind":"sleep","payload":{"ms":1,"fail":"permanent"}}`,
		`{"id":"trans","kind":"sleep","payload":{"ms":1,"fail":"transient"}}`,
		`{"id":"nokind","kind":"nosuch","payload":{}}`,
		`{"id":"fine","kind":"sleep","payload":{"ms":1}}`,
	}
	code, sum := submitFile(t, url, lines...)
	if code != 1 || sum.OK != 1 || sum.Errors != 2 || sum.Dead != 1 || sum.DeadLettered != 3 {
		t.Errorf("submit exited %d with %+v; want 1 with ok 1, errors 2, dead 1, "+
			"dead_lettered 3", code, sum)
	}

	var out bytes.Buffer
	args := []string{"dead", "list", "--nats-url", url, "--id", "perm,trans,nokind,fine",
		"--output", "json"}
	if code := run(context.Background(), args, &out); code != 0 {
		t.Fatalf("dead list exited %d: %s", code, out.String())
	}
	var listed []json.RawMessage
	if err := json.Unmarshal(out.Bytes(), &listed); err != nil {
		t.Fatalf("dead list output: %v: %s", err, out.String())
	}
	if len(listed) != sum.DeadLettered {
		t.Errorf("dead list shows %d entries, summary dead_lettered %d:\n%s",
			len(listed), sum.DeadLettered, out.String())
	}
}

// TestSubmitLimits checks the input limits: a line over the read limit and
// a request over the server's max payload are refused, naming the line,
// before anything is published; a request near the max payload goes
// through.
func TestSubmitLimits(t *testing.T) {
	dir := t.TempDir()
	big := func(n int) string {
		return `{"kind":"sleep","payload":{"ms":1,"pad":"` + strings.Repeat("x", n) + `"}}`
	}
	file := filepath.Join(dir, "long.jsonl")
	body := big(10) + "\n" + big(2000) + "\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := readRequests(file, "sleep", "p", 1024)
	if err == nil || !strings.Contains(err.Error(), "line 2") ||
		!strings.Contains(err.Error(), "1023 bytes") {
		t.Errorf("readRequests(long line) error = %v; want line 2 and the limit", err)
	}

	natsURL := testenv.NATS(t)
	conn := testenv.Conn(t, natsURL)
	maxPayload := int(conn.NC.MaxPayload())
	tests := []struct {
		name string
		pad  int
		want int
	}{
		{"over the max payload", 2 * maxPayload, 2},
		{"near the max payload", maxPayload - 1024, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, tt.name+".jsonl")
			body := big(10) + "\n" + big(tt.pad) + "\n"
			if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			code := run(context.Background(), []string{"submit", "--nats-url", natsURL,
				"--file", file, "--wait=false"}, &out)
			if code != tt.want {
				t.Errorf("submit exited %d, want %d: %s", code, tt.want, out.String())
			}
		})
	}
	info, err := conn.JS.Stream(context.Background(), events.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != 2 {
		t.Errorf("WORK holds %d messages, want the 2 of the request near the limit", n)
	}
}

// TestSubmitTimeoutOnlyWhenWaiting checks that --timeout is refused only
// when submit waits for results, the one case where it plays a part.
func TestSubmitTimeoutOnlyWhenWaiting(t *testing.T) {
	url := testenv.NATS(t)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no wait, zero timeout", []string{"--wait=false", "--timeout", "0s"}, 0},
		{"no wait, negative timeout", []string{"--wait=false", "--timeout", "-1s"}, 0},
		{"wait, zero timeout", []string{"--timeout", "0s"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"submit", "--nats-url", url}, tt.args...)
			if got := run(context.Background(), args, &out); got != tt.want {
				t.Errorf("run(%q) = %d, want %d; output %q", args, got, tt.want, out.String())
			}
		})
	}
}

// TestReadRequestsNotJSON checks that a --file line that is not a JSON
// object is reported as such, with the JSON error, never as msgpack.
func TestReadRequestsNotJSON(t *testing.T) {
	dir := t.TempDir()
	good := `{"kind":"sleep","payload":{"ms":1}}`
	tests := []struct{ name, line, want string }{
		{"text", "nope", "invalid character 'o' in literal null (expecting 'u')"},
		{"truncated", `{"kind":"sleep"`, "unexpected end of JSON input"},
		{"two values", `{} {}`, "invalid character '{' after top-level value"},
		{"array", ` [1, 2]`, "want an object, got [1, 2]"},
		{"number", "42", "want an object, got 42"},
		{"invalid utf-8", "{\"kind\":\"\xff\"}", "invalid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, tt.name+".jsonl")
			if err := os.WriteFile(file, []byte(good+"\n"+tt.line+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readRequests(file, "sleep", "p", maxLineBytes)
			want := "line 2: not a JSON work request: " + tt.want
			if err == nil || !strings.Contains(err.Error(), want) ||
				strings.Contains(err.Error(), "msgpack") {
				t.Errorf("error = %v, want it to mention %q, not msgpack", err, want)
			}
		})
	}
}
