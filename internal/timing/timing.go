// Package timing records how long each step of a service takes and
// publishes every measurement as an events.Timing on the telemetry stream.
//
// A service makes one Recorder and calls Record, or Since with the step's
// start time, on its work path. Publishing is asynchronous: a step never
// waits for the telemetry stream, and Flush waits for what is in flight.
package timing

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/pkg/events"
)

// Recorder publishes timings for one service.
type Recorder struct {
	conn    *bus.Conn
	service string
	host    string
	log     *slog.Logger

	failed atomic.Int64
}

// NewRecorder returns a recorder that publishes as service over conn.
func NewRecorder(conn *bus.Conn, service string, log *slog.Logger) *Recorder {
	host, _ := os.Hostname()
	if log == nil {
		log = slog.Default()
	}
	return &Recorder{conn: conn, service: service, host: host, log: log}
}

// Since records the time from start to now for op, with status "error"
// when err is not nil.
func (r *Recorder) Since(op string, start time.Time, err error) time.Duration {
	d := time.Since(start)
	status := events.TimingOK
	if err != nil {
		status = events.TimingError
	}
	r.Record(op, status, d)
	return d
}

// Record publishes one timing of op.
func (r *Recorder) Record(op, status string, d time.Duration) {
	ev := &events.Timing{
		Service: r.service, Op: op, Status: status,
		Duration: d, Time: time.Now(), Host: r.host,
	}
	msg, err := bus.Message(events.TimingSubject(r.service, op), ev, "")
	if err == nil {
		_, err = r.conn.JS.PublishMsgAsync(msg)
	}
	if err != nil {
		// Rate-limit by logging only every 1000th failure.
		if n := r.failed.Add(1); n%1000 == 1 {
			r.log.Warn("timing not published", "op", op, "failed_total", n, "err", err)
		}
	}
}

// Failed is how many timings could not be handed to NATS.
func (r *Recorder) Failed() int64 { return r.failed.Load() }

// Flush waits until every published timing is acknowledged or ctx ends.
func (r *Recorder) Flush(ctx context.Context) {
	select {
	case <-r.conn.JS.PublishAsyncComplete():
	case <-ctx.Done():
	}
}
