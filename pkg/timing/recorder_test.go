package timing_test

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/quantile"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/pkg/timing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const service = "svc"

// received is one batch read back from the telemetry stream.
type received struct {
	batch events.TimingBatch
	msgID string
}

// newRecorder returns a recorder for service that logs through t.
func newRecorder(t testing.TB, js jetstream.JetStream, opts timing.Options) *timing.Recorder {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testenv.Logger(t)
	}
	rec, err := timing.New(js, service, opts)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	return rec
}

// flush calls Flush and fails the test on an error.
func flush(t *testing.T, rec *timing.Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rec.Flush(ctx); err != nil {
		t.Fatalf("Flush() error = %v", err)
	}
}

// stored counts the batches of service on the telemetry stream.
func stored(t *testing.T, conn *bus.Conn) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := conn.JS.Stream(ctx, events.StreamTelemetry)
	if err != nil {
		t.Fatalf("stream %s: %v", events.StreamTelemetry, err)
	}
	info, err := s.Info(ctx,
		jetstream.WithSubjectFilter(events.BatchTimingSubject(service)))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	n := uint64(0)
	for _, c := range info.State.Subjects {
		n += c
	}
	return int(n)
}

// readBatches returns every batch of service on the telemetry stream, in
// stream order.
func readBatches(t *testing.T, conn *bus.Conn) []received {
	t.Helper()
	n := stored(t, conn)
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamTelemetry,
		jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.BatchTimingSubject(service)},
		})
	if err != nil {
		t.Fatalf("ordered consumer: %v", err)
	}
	msgs, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatalf("fetch %d batches: %v", n, err)
	}

	var out []received
	for msg := range msgs.Messages() {
		var b events.TimingBatch
		if err := events.Unmarshal(msg.Data(), &b); err != nil {
			t.Fatalf("decode batch on %s: %v", msg.Subject(), err)
		}
		out = append(out, received{batch: b, msgID: msg.Headers().Get(jetstream.MsgIDHeader)})
	}
	if len(out) != n {
		t.Fatalf("read %d batches, stream holds %d", len(out), n)
	}
	return out
}

// merged decodes the deltas of bs and merges them by "op/status".
func merged(t *testing.T, bs []received) map[string]*quantile.Summary {
	t.Helper()
	out := map[string]*quantile.Summary{}
	for _, r := range bs {
		for _, d := range r.batch.Deltas {
			var s quantile.Summary
			if err := s.UnmarshalBinary(d.Summary); err != nil {
				t.Fatalf("batch %d: summary of %s: %v", r.batch.Seq, d.Op, err)
			}
			k := d.Op + "/" + d.Status
			if out[k] == nil {
				out[k] = new(quantile.Summary)
			}
			out[k].Merge(&s)
		}
	}
	return out
}

// ms is a duration of v milliseconds.
func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// nearestRank is the q-quantile of sorted values by nearest rank.
func nearestRank(sorted []float64, q float64) float64 {
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(rank, 0)]
}

func TestNewChecksArguments(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	tests := []struct {
		name    string
		js      jetstream.JetStream
		service string
		opts    timing.Options
		wantErr bool
	}{
		{"defaults", conn.JS, "svc", timing.Options{}, false},
		{"all set", conn.JS, "svc", timing.Options{FlushInterval: time.Second,
			Host: "h", Instance: "i", MaxPending: 1}, false},
		{"nil jetstream", nil, "svc", timing.Options{}, true},
		{"no service", conn.JS, "", timing.Options{}, true},
		{"negative interval", conn.JS, "svc", timing.Options{FlushInterval: -1}, true},
		{"negative max pending", conn.JS, "svc", timing.Options{MaxPending: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := timing.New(tt.js, tt.service, tt.opts)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Errorf("New() error = %v, want error: %t", err, tt.wantErr)
			}
		})
	}
}

func TestFlushPublishesExactSummaries(t *testing.T) {
	seq := func(n int) []float64 {
		vs := make([]float64, n)
		for i := range vs {
			vs[i] = float64(i + 1)
		}
		return vs
	}
	outlier := append(slices.Repeat([]float64{1}, 99), 10_000_000) // 10,000 s
	tests := []struct {
		name   string
		values []float64 // milliseconds
		want   map[float64]float64
	}{
		{"1 to 100", seq(100), map[float64]float64{0.5: 50, 0.95: 95, 0.99: 99, 1: 100}},
		{"one outlier", outlier, map[float64]float64{0.5: 1, 0.99: 1, 1: 10_000_000}},
		{"one sample", []float64{7.5}, map[float64]float64{0: 7.5, 0.5: 7.5, 1: 7.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := testenv.Conn(t, testenv.NATS(t))
			rec := newRecorder(t, conn.JS, timing.Options{Host: "h1", Instance: "inst"})
			for _, v := range tt.values {
				rec.Record("op", events.TimingOK, ms(v))
			}
			flush(t, rec)

			got := readBatches(t, conn)
			if len(got) != 1 {
				t.Fatalf("got %d batches, want 1", len(got))
			}
			checkBatch(t, got[0], 1)
			s := merged(t, got)["op/ok"]
			if s == nil {
				t.Fatalf("batch has no op/ok delta: %+v", got[0].batch.Deltas)
			}
			checkSummary(t, s, tt.values, tt.want)
		})
	}
}

// checkBatch checks the envelope of the seq'th batch of instance "inst".
func checkBatch(t *testing.T, r received, seq uint64) {
	t.Helper()
	b := r.batch
	if b.Service != service || b.Host != "h1" || b.Instance != "inst" || b.Seq != seq {
		t.Errorf("batch = service %q host %q instance %q seq %d, want %s h1 inst %d",
			b.Service, b.Host, b.Instance, b.Seq, service, seq)
	}
	if want := "inst." + strconv.FormatUint(seq, 10); r.msgID != want {
		t.Errorf("msg id = %q, want %q", r.msgID, want)
	}
	iv := timing.DefaultFlushInterval
	if !b.Start.Before(b.End) || b.End.Sub(b.Start) > iv || b.Start.UnixNano()%int64(iv) != 0 {
		t.Errorf("batch covers [%s, %s), want a start aligned to %s and at most that long",
			b.Start.Format(time.RFC3339Nano), b.End.Format(time.RFC3339Nano), iv)
	}
	if age := time.Since(b.End); age < 0 || age > time.Minute {
		t.Errorf("batch ended %s ago, want within the last minute", age)
	}
}

// checkSummary compares s with the values it was built from.
func checkSummary(t *testing.T, s *quantile.Summary, values []float64, want map[float64]float64) {
	t.Helper()
	sum := 0.0
	for _, v := range values {
		sum += v
	}
	if s.Count() != int64(len(values)) || s.Sum() != sum ||
		s.Min() != slices.Min(values) || s.Max() != slices.Max(values) {
		t.Errorf("count %d sum %v min %v max %v, want %d %v %v %v", s.Count(), s.Sum(),
			s.Min(), s.Max(), len(values), sum, slices.Min(values), slices.Max(values))
	}
	for q, w := range want {
		if got := s.Quantile(q); got != w {
			t.Errorf("Quantile(%v) = %v, want %v", q, got, w)
		}
	}
}

func TestFlushFoldsManySamplesIntoSketch(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{})

	rng := rand.New(rand.NewPCG(1, 2))
	values := make([]float64, 5000)
	for i := range values {
		d := ms(math.Exp(rng.NormFloat64()) * 20) // lognormal around 20 ms
		rec.Record("op", events.TimingOK, d)
		values[i] = timing.Millis(d)
	}
	flush(t, rec)

	s := merged(t, readBatches(t, conn))["op/ok"]
	if s == nil || s.Exact() {
		t.Fatalf("summary = %v, want a sketch", s)
	}
	sorted := slices.Sorted(slices.Values(values))
	if s.Count() != 5000 || s.Min() != sorted[0] || s.Max() != sorted[4999] {
		t.Errorf("count %d min %v max %v, want 5000 %v %v",
			s.Count(), s.Min(), s.Max(), sorted[0], sorted[4999])
	}
	sum := 0.0
	for _, v := range values {
		sum += v
	}
	if math.Abs(s.Sum()-sum) > 1e-9*sum {
		t.Errorf("sum = %v, want %v", s.Sum(), sum)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := nearestRank(sorted, q)
		if got := s.Quantile(q); math.Abs(got-want) > quantile.RelativeAccuracy*want {
			t.Errorf("Quantile(%v) = %v, want %v within 1%%", q, got, want)
		}
	}
}

func TestFlushRejectsBadSamplesAndSkipsEmptyIntervals(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{})
	tests := []struct {
		name   string
		record func()
	}{
		{"negative duration", func() { rec.Record("op", "ok", -time.Nanosecond) }},
		{"negative since", func() { rec.Since("op", time.Now().Add(time.Hour), nil) }},
		{"negative ms", func() { rec.Observe("op", "ok", -1) }},
		{"NaN", func() { rec.Observe("op", "ok", math.NaN()) }},
		{"+Inf", func() { rec.Observe("op", "ok", math.Inf(1)) }},
		{"-Inf", func() { rec.Observe("op", "ok", math.Inf(-1)) }},
	}
	for i, tt := range tests {
		tt.record()
		if got := rec.Stats().Rejected; got != int64(i+1) {
			t.Errorf("%s: Stats().Rejected = %d, want %d", tt.name, got, i+1)
		}
	}

	flush(t, rec)
	flush(t, rec)
	if st := rec.Stats(); st.Recorded != 0 || st.Published != 0 {
		t.Errorf("Stats() = %+v, want nothing recorded or published", st)
	}
	if n := stored(t, conn); n != 0 {
		t.Errorf("stream holds %d batches, want none", n)
	}
}

func TestSinceAndObserve(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{})

	d := rec.Since("step", time.Now().Add(-5*time.Millisecond), nil)
	rec.Since("step", time.Now(), errors.New("boom"))
	rec.Observe("step", "hit", 2.5)
	flush(t, rec)

	got := merged(t, readBatches(t, conn))
	tests := []struct {
		key  string
		want float64
	}{
		{"step/ok", timing.Millis(d)},
		{"step/hit", 2.5},
	}
	for _, tt := range tests {
		if s := got[tt.key]; s == nil || s.Count() != 1 || s.Max() != tt.want {
			t.Errorf("%s = %v, want one sample of %v", tt.key, s, tt.want)
		}
	}
	if s := got["step/error"]; s == nil || s.Count() != 1 {
		t.Errorf("step/error = %v, want one sample", s)
	}
	if d < 5*time.Millisecond {
		t.Errorf("Since() = %s, want at least 5ms", d)
	}
}

func TestFailedPublishIsRetried(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{})
	deleteTelemetry(t, conn)

	// Two flushes fail while the stream is gone; both batches wait.
	for _, v := range []float64{1, 2} {
		for range 10 {
			rec.Record("op", events.TimingOK, ms(v))
		}
		if err := flushWithin(rec, 300*time.Millisecond); err == nil {
			t.Fatal("Flush() without a stream = nil, want an error")
		}
	}
	if st := rec.Stats(); st.Pending != 2 || st.Failures != 2 || st.Published != 0 {
		t.Errorf("Stats() = %+v, want 2 pending after 2 failures", st)
	}

	ensureStreams(t, conn)
	flush(t, rec)
	got := readBatches(t, conn)
	if len(got) != 2 || got[0].batch.Seq != 1 || got[1].batch.Seq != 2 {
		t.Fatalf("got %d batches, want seq 1 and 2 in order", len(got))
	}
	s := merged(t, got)["op/ok"]
	if s.Count() != 20 || s.Sum() != 30 {
		t.Errorf("count %d sum %v, want 20 and 30", s.Count(), s.Sum())
	}
	if st := rec.Stats(); st.Pending != 0 || st.Published != 2 || st.Dropped != 0 {
		t.Errorf("Stats() = %+v, want 2 published, none pending or dropped", st)
	}
}

func TestPendingBeyondMaxDropsOldest(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{MaxPending: 2})
	deleteTelemetry(t, conn)

	for _, v := range []float64{1, 2, 3} {
		rec.Record("op", events.TimingOK, ms(v))
		if err := flushWithin(rec, 300*time.Millisecond); err == nil {
			t.Fatal("Flush() without a stream = nil, want an error")
		}
	}
	if st := rec.Stats(); st.Pending != 2 || st.Dropped != 1 {
		t.Errorf("Stats() = %+v, want 2 pending and 1 dropped", st)
	}

	ensureStreams(t, conn)
	flush(t, rec)
	got := readBatches(t, conn)
	if len(got) != 2 || got[0].batch.Seq != 2 || got[1].batch.Seq != 3 {
		t.Fatalf("got %d batches, want seq 2 and 3", len(got))
	}
	if s := merged(t, got)["op/ok"]; s.Count() != 2 || s.Sum() != 5 {
		t.Errorf("count %d sum %v, want the newest two: 2 and 5", s.Count(), s.Sum())
	}
}

// lostAck publishes for real but reports the first n publishes as failed,
// as when the ack is lost on the way back: a fault a real server cannot be
// made to show on demand.
type lostAck struct {
	jetstream.JetStream
	n atomic.Int32
}

func (l *lostAck) PublishMsg(ctx context.Context, msg *nats.Msg,
	opts ...jetstream.PublishOpt,
) (*jetstream.PubAck, error) {
	ack, err := l.JetStream.PublishMsg(ctx, msg, opts...)
	if err == nil && l.n.Add(-1) >= 0 {
		return nil, errors.New("ack lost")
	}
	return ack, err
}

func TestResentBatchIsStoredOnce(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	js := &lostAck{JetStream: conn.JS}
	js.n.Store(1)
	rec := newRecorder(t, js, timing.Options{})

	for i := range 100 {
		rec.Record("a", events.TimingOK, ms(float64(i)))
	}
	if err := rec.Flush(context.Background()); err == nil {
		t.Fatal("Flush() with a lost ack = nil, want an error")
	}
	rec.Record("b", events.TimingOK, ms(1))
	flush(t, rec)

	got := readBatches(t, conn)
	if len(got) != 2 || got[0].batch.Seq != 1 || got[1].batch.Seq != 2 {
		t.Fatalf("stream holds %d batches, want seq 1 once, then seq 2", len(got))
	}
	sums := merged(t, got)
	if sums["a/ok"].Count() != 100 || sums["b/ok"].Count() != 1 {
		t.Errorf("counts a %d b %d, want 100 and 1", sums["a/ok"].Count(), sums["b/ok"].Count())
	}
	if st := rec.Stats(); st.Published != 2 || st.Failures != 1 || st.Pending != 0 {
		t.Errorf("Stats() = %+v, want 2 published after 1 failure", st)
	}
}

func TestConcurrentRecordWhileRunning(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	const every = 20 * time.Millisecond
	rec := newRecorder(t, conn.JS, timing.Options{FlushInterval: every})
	stop := testenv.Run(t, rec, 5*time.Second)

	// Eight goroutines record for about eight intervals, so that
	// intervals close and flush while they record.
	const workers = 8
	ops := []string{"a", "b", "c", "d"}
	var recorded, rejected, sum atomic.Int64
	until := time.Now().Add(8 * every)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var n, bad, ms int64
			for i := 0; time.Now().Before(until); i++ {
				d := time.Duration(i%10) * time.Millisecond
				rec.Record(ops[(w+i)%len(ops)], events.TimingOK, d)
				n, ms = n+1, ms+int64(i%10)
				if i%100 == 0 {
					rec.Record("bad", events.TimingOK, -1)
					bad++
				}
			}
			recorded.Add(n)
			rejected.Add(bad)
			sum.Add(ms)
		})
	}
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}

	got := readBatches(t, conn)
	if len(got) < 3 {
		t.Errorf("got %d batches, want one per interval, at least 3", len(got))
	}
	checkSequence(t, got, every)
	total, totalMs := int64(0), 0.0
	for _, s := range merged(t, got) {
		total += s.Count()
		totalMs += s.Sum()
	}
	if total != recorded.Load() || totalMs != float64(sum.Load()) {
		t.Errorf("batches hold %d samples summing %v ms, want %d and %d",
			total, totalMs, recorded.Load(), sum.Load())
	}
	st := rec.Stats()
	if st.Recorded != recorded.Load() || st.Rejected != rejected.Load() ||
		st.Published != int64(len(got)) || st.Pending != 0 || st.Dropped != 0 {
		t.Errorf("Stats() = %+v, want %d recorded, %d rejected, %d published",
			st, recorded.Load(), rejected.Load(), len(got))
	}
}

// checkSequence checks that bs number 1, 2, 3... and cover disjoint
// intervals aligned to every, the last one possibly cut short.
func checkSequence(t *testing.T, bs []received, every time.Duration) {
	t.Helper()
	for i, r := range bs {
		b := r.batch
		if b.Seq != uint64(i+1) {
			t.Errorf("batch %d has seq %d, want %d", i, b.Seq, i+1)
		}
		if b.Start.UnixNano()%int64(every) != 0 || !b.Start.Before(b.End) ||
			b.End.Sub(b.Start) > every {
			t.Errorf("batch %d covers [%s, %s), want an aligned start, at most %s",
				b.Seq, b.Start.Format(time.RFC3339Nano), b.End.Format(time.RFC3339Nano), every)
		}
		if i > 0 && b.Start.Before(bs[i-1].batch.End) {
			t.Errorf("batch %d starts %s, before batch %d ends", b.Seq,
				b.Start.Format(time.RFC3339Nano), b.Seq-1)
		}
	}
}

func TestRunFlushesWhenStopped(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{FlushInterval: time.Hour})
	stop := testenv.Run(t, rec, 5*time.Second)

	for _, v := range []float64{1, 2, 3} {
		rec.Record("op", events.TimingOK, ms(v))
	}
	if err := stop(); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}

	// The final flush was acknowledged before Run returned.
	got := readBatches(t, conn)
	if len(got) != 1 {
		t.Fatalf("got %d batches after Run returned, want 1", len(got))
	}
	if s := merged(t, got)["op/ok"]; s == nil || s.Count() != 3 || s.Sum() != 6 {
		t.Errorf("op/ok = %v, want 3 samples summing 6", s)
	}
}

func TestRunFlushesEveryInterval(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	rec := newRecorder(t, conn.JS, timing.Options{FlushInterval: 50 * time.Millisecond})
	testenv.Run(t, rec, 5*time.Second)

	rec.Record("op", events.TimingOK, ms(1))
	testenv.WaitFor(t, 5*time.Second, "a batch without Flush", func() bool {
		return stored(t, conn) == 1
	})
	if st := rec.Stats(); st.Published != 1 {
		t.Errorf("Stats().Published = %d, want 1", st.Published)
	}
}

func deleteTelemetry(t *testing.T, conn *bus.Conn) {
	t.Helper()
	if err := conn.JS.DeleteStream(context.Background(), events.StreamTelemetry); err != nil {
		t.Fatalf("delete stream: %v", err)
	}
}

func ensureStreams(t *testing.T, conn *bus.Conn) {
	t.Helper()
	if err := conn.EnsureStreams(context.Background()); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
}

func flushWithin(rec *timing.Recorder, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return rec.Flush(ctx)
}

// benchOps are the (op, status) pairs the benchmarks spread samples over.
var benchOps = []string{"accept", "release", "publish", "batch", "csv", "http", "sleep", "x"}

// BenchmarkRecord measures the record path: the summary lookup and the
// sketch update, one goroutine. Nothing flushes; intervals are queued and
// the oldest dropped, as when Run lags.
func BenchmarkRecord(b *testing.B) {
	conn := testenv.Conn(b, testenv.NATS(b))
	rec := newRecorder(b, conn.JS, timing.Options{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		rec.Record(benchOps[i&7], events.TimingOK, time.Duration(i&0xfffff)*time.Nanosecond)
		i++
	}
}

// BenchmarkRecordParallel is BenchmarkRecord from GOMAXPROCS goroutines.
func BenchmarkRecordParallel(b *testing.B) {
	conn := testenv.Conn(b, testenv.NATS(b))
	rec := newRecorder(b, conn.JS, timing.Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(1 << 20)
		for pb.Next() {
			rec.Record(benchOps[i&7], events.TimingOK, time.Duration(i&0xfffff)*time.Nanosecond)
			i++
		}
	})
}
