// Package testenv starts real servers for tests: an embedded nats-server
// with JetStream on a random port and a temporary store, and a redis-server
// process on a free port. Everything it starts is stopped by t.Cleanup.
//
// Redis tests skip when redis-server is not installed, except under CI
// (CI=true), where a missing server fails the test instead of hiding it.
package testenv

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/perfpipe/perfpipe/internal/broker"
	"github.com/perfpipe/perfpipe/internal/bus"
)

// NATS starts an embedded NATS server with JetStream and returns its
// client URL.
func NATS(t testing.TB) string {
	t.Helper()
	srv, err := broker.Start(broker.Config{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv.ClientURL()
}

// Conn connects to url, creates the perfpipe streams, and closes the
// connection at cleanup.
func Conn(t testing.TB, url string) *bus.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, url, t.Name(), Logger(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(c.Close)
	if err := c.EnsureStreams(ctx); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return c
}

// Logger returns a logger that writes through t.Log at debug level when
// PERFPIPE_TEST_LOG is set, and discards otherwise.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("PERFPIPE_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// RequireRedis reports whether redis-server is on PATH. Without it the test
// is skipped, or failed under CI.
func RequireRedis(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("redis-server not found under CI: install it (apt-get install redis-server)")
	}
	t.Skip("redis-server not installed; set CI=true to make this a failure")
	return ""
}

// Redis starts a redis-server on a free loopback port with no persistence
// and returns its URL.
func Redis(t testing.TB) string {
	t.Helper()
	return StartRedis(t).URL
}

// RedisProcess is a redis-server that a test can stop and start again on
// the same port, to show what clients do while their server is away. It
// keeps no data across a restart. Start and Stop belong to the test's
// goroutine.
type RedisProcess struct {
	// URL is redis://127.0.0.1:<port>/0, the same across restarts.
	URL string

	t    testing.TB
	bin  string
	port int
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts a redis-server on a free loopback port with no
// persistence, waits until it answers, and stops it at cleanup.
func StartRedis(t testing.TB) *RedisProcess {
	t.Helper()
	p := &RedisProcess{t: t, bin: RequireRedis(t), port: FreePort(t), dir: t.TempDir()}
	p.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", p.port)
	t.Cleanup(p.Stop)
	p.Start()
	return p
}

// Start starts the server again after Stop; it does nothing while the
// server runs.
func (p *RedisProcess) Start() {
	p.t.Helper()
	if p.cmd != nil {
		return
	}
	cmd := exec.Command(p.bin,
		"--port", strconv.Itoa(p.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", p.dir,
		"--logfile", filepath.Join(p.dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start redis-server: %v", err)
	}
	p.cmd = cmd

	opts, _ := redis.ParseURL(p.URL)
	client := redis.NewClient(opts)
	defer client.Close()
	WaitFor(p.t, 10*time.Second, "redis-server to answer", func() bool {
		return client.Ping(context.Background()).Err() == nil
	})
}

// Stop kills the server (SIGKILL, as a crash would) and waits for it to
// exit; it does nothing when the server is stopped.
func (p *RedisProcess) Stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond every 20 ms until it holds or timeout passes, then
// fails the test naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Runner is a service: Run blocks until ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Run starts svc.Run in a goroutine and returns stop, which cancels it,
// waits for Run to return (failing the test after within), and returns
// Run's error. stop may be called more than once; cleanup calls it and
// reports a non-nil error.
func Run(t testing.TB, svc Runner, within time.Duration) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	var (
		once sync.Once
		err  error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(within):
				err = fmt.Errorf("run did not return within %s of cancel", within)
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return stop
}
