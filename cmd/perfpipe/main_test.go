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
)

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"--help"}, 0},
		{"unknown flag", []string{"submit", "--nope"}, 2},
		{"unknown command", []string{"frobnicate"}, 2},
		{"zero n", []string{"submit", "-n", "0"}, 2},
		{"bad priority", []string{"submit", "--priority", "12"}, 2},
		{"bad payload", []string{"submit", "--payload", "not json"}, 2},
		{"bad output", []string{"submit", "--output", "xml"}, 2},
		{"negative rate", []string{"submit", "--rate", "-5"}, 2},
		{"submit argument", []string{"submit", "extra"}, 2},
		{"missing file", []string{"submit", "--file", "/nonexistent.jsonl"}, 2},
		{"zero timeout", []string{"submit", "--timeout", "0s"}, 2},
		{"negative timeout", []string{"submit", "--timeout", "-1s"}, 2},
		{"reserved priority 0", []string{"scheduler", "--reserved-priority", "0"}, 2},
		{"reserved priority 10", []string{"up", "--reserved-priority", "10"}, 2},
		{"reserved priority -1", []string{"scheduler", "--reserved-priority", "-1"}, 2},
		{"reserved priority text", []string{"scheduler", "--reserved-priority", "high"}, 2},
		{"bad log level", []string{"scheduler", "--log-level", "loud"}, 2},
		{"stray argument", []string{"batcher", "extra"}, 2},
		{"bad listen", []string{"up", "--listen", "nowhere"}, 2},
		{"unknown service", []string{"up", "--services", "agent,nope"}, 2},
		{"service twice", []string{"up", "--services", "agent,agent"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(context.Background(), tt.args, &bytes.Buffer{}); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

func TestReadRequests(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.jsonl", `{"payload":{"ms":1}}`+"\n\n"+`{"id":"x","kind":"http","priority":9}`+"\n")
	sub, err := readRequests(good, "sleep", "p", maxLineBytes)
	if err != nil {
		t.Fatalf("readRequests: %v", err)
	}
	reqs := sub.reqs
	if len(reqs) != 2 || reqs[0].Kind != "sleep" || reqs[0].ID != "p-1" ||
		reqs[1].ID != "x" || reqs[1].Kind != "http" || reqs[1].Priority != 9 {
		t.Errorf("requests = %+v, %+v", reqs[0], reqs[1])
	}

	tests := []struct{ name, body, want string }{
		{"broken line", `{"payload":` + "\n", "line 1"},
		{"bad priority", `{}` + "\n" + `{"priority":10}`, "line 2"},
		{"empty", "\n\n", "holds no requests"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readRequests(write(tt.name, tt.body), "sleep", "p", maxLineBytes)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestUpSubmitWatch runs `perfpipe up` in-process on free ports and uses
// submit, watch and the HTTP endpoints against it, as a user would.
func TestUpSubmitWatch(t *testing.T) {
	natsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	t.Setenv("PERFPIPE_LOG_LEVEL", "warn")
	t.Setenv("PERFPIPE_WORKERS", "4") // read from the environment

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var upCode int
	go func() {
		defer wg.Done()
		upCode = run(ctx, []string{"up", "--listen", natsAddr, "--http-addr", httpAddr,
			"--store-dir", t.TempDir(), "--csv-data-dir", "../../testdata/prices"}, &bytes.Buffer{})
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if upCode != 0 {
			t.Errorf("up exited %d after cancel, want 0", upCode)
		}
	})
	url := "nats://" + natsAddr
	testenv.WaitFor(t, 20*time.Second, "perfpipe up to serve /healthz", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	var out bytes.Buffer
	code := run(context.Background(), []string{"submit", "--nats-url", url, "--kind", "sleep",
		"--payload", `{"ms":2}`, "-n", "50", "--output", "json", "--timeout", "30s"}, &out)
	if code != 0 {
		t.Fatalf("submit exited %d: %s", code, out.String())
	}
	var sum Summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatalf("summary: %v: %s", err, out.String())
	}
	if sum.Submitted != 50 || sum.OK != 50 || sum.Missing != 0 || sum.EndToEnd["p99"] <= 0 {
		t.Errorf("summary = %+v", sum)
	}
	if sum.Run["p50"] < 2 {
		t.Errorf("run p50 = %.3f ms, want at least the 2 ms slept", sum.Run["p50"])
	}

	// A request id seen within the de-duplication window is reported at
	// once, not waited for; a failed item fails the command and says why.
	file := filepath.Join(t.TempDir(), "reqs.jsonl")
	body := `{"id":"fixed-1","kind":"sleep","payload":{"ms":1}}` + "\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	submitFile := []string{"submit", "--nats-url", url, "--file", file, "--timeout", "20s"}
	if code := run(context.Background(), submitFile, &out); code != 0 {
		t.Fatalf("first submit of fixed-1 exited %d", code)
	}
	if !strings.Contains(out.String(), `"slept_ms": 1`) {
		t.Errorf("a single submit does not show its output:\n%s", out.String())
	}
	out.Reset()
	start := time.Now()
	if code := run(context.Background(), submitFile, &out); code != 0 ||
		!strings.Contains(out.String(), "1 already submitted") || time.Since(start) > 10*time.Second {
		t.Errorf("second submit of fixed-1 exited %d after %s:\n%s", code, time.Since(start), out.String())
	}
	out.Reset()
	code = run(context.Background(), []string{"submit", "--nats-url", url, "--kind", "sleep",
		"--payload", `{"ms":1,"fail":"permanent"}`, "--timeout", "20s"}, &out)
	if code != 1 || !strings.Contains(out.String(), "error") {
		t.Errorf("failing submit exited %d, want 1 with the error listed:\n%s", code, out.String())
	}

	out.Reset()
	code = run(context.Background(), []string{"watch", "--nats-url", url, "--once",
		"--group", "agent", "--wait", "2500ms"}, &out)
	if code != 0 || !strings.Contains(out.String(), "sleep") {
		t.Errorf("watch --once exited %d:\n%s", code, out.String())
	}
}
