package bus_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perfpipe/perfpipe/internal/bus"
	"github.com/perfpipe/perfpipe/internal/testenv"
	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	if err := conn.EnsureStreams(ctx); err != nil {
		t.Fatalf("second EnsureStreams: %v", err)
	}
	for _, cfg := range bus.StreamConfigs() {
		info, err := conn.JS.Stream(ctx, cfg.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", cfg.Name, err)
		}
		if got := info.CachedInfo().Config.Subjects; len(got) != len(cfg.Subjects) {
			t.Errorf("stream %s subjects = %v, want %v", cfg.Name, got, cfg.Subjects)
		}
	}
}

// TestEnsureStreamsUpdatesOnlyWhatDiffers runs EnsureStreams on streams
// as configured, which sends no update, and after one stream was changed,
// which updates that stream alone, back to its configuration.
func TestEnsureStreamsUpdatesOnlyWhatDiffers(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	var mu sync.Mutex
	var updates []string
	sub, err := conn.NC.Subscribe("$JS.API.STREAM.UPDATE.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		updates = append(updates, strings.TrimPrefix(m.Subject, "$JS.API.STREAM.UPDATE."))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	seen := func() []string {
		t.Helper()
		if err := conn.NC.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(updates)
	}

	if err := conn.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if got := seen(); len(got) != 0 {
		t.Errorf("updates of streams as configured: %v, want none", got)
	}

	st, err := conn.JS.Stream(ctx, events.StreamReady)
	if err != nil {
		t.Fatal(err)
	}
	changed := st.CachedInfo().Config
	changed.MaxAge = time.Hour
	if _, err := conn.JS.UpdateStream(ctx, changed); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the test's own update seen", func() bool {
		return len(seen()) == 1
	})
	mu.Lock()
	updates = nil
	mu.Unlock()
	if err := conn.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	// Requests reach the subscription in order, after EnsureStreams sent
	// them one by one, each answered.
	testenv.WaitFor(t, 5*time.Second, "an update", func() bool { return len(seen()) > 0 })
	if got := seen(); !slices.Equal(got, []string{events.StreamReady}) {
		t.Errorf("updates after changing %s: %v, want it alone", events.StreamReady, got)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.Config.MaxAge, 24*time.Hour; got != want {
		t.Errorf("%s max age = %s, want %s again", events.StreamReady, got, want)
	}
}

func TestPublishDeduplicatesAndStampsHeaders(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	req := &events.WorkRequest{ID: "same", Kind: "sleep"}
	for range 3 {
		if err := conn.Publish(ctx, events.SubmitSubject("sleep"), req, req.ID); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	stream, _ := conn.JS.Stream(ctx, events.StreamWork)
	info, _ := stream.Info(ctx)
	if info.State.Msgs != 1 {
		t.Errorf("stream holds %d messages after 3 publishes of one id, want 1", info.State.Msgs)
	}

	msg, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get(events.HeaderType); got != string(events.TypeWorkRequest) {
		t.Errorf("type header = %q, want %q", got, events.TypeWorkRequest)
	}
	if got := msg.Header.Get(jetstream.MsgIDHeader); got != "same" {
		t.Errorf("msg id header = %q, want same", got)
	}
}

func TestDeadLetter(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	dl := &events.DeadLetter{Service: "test", Subject: "work.submit.x", Reason: "undecodable",
		Data: []byte("junk")}
	if err := conn.DeadLetter(ctx, dl); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	stream, _ := conn.JS.Stream(ctx, events.StreamDead)
	msg, err := stream.GetLastMsgForSubject(ctx, events.DeadSubject("unknown"))
	if err != nil {
		t.Fatalf("dead letter without kind not under work.dead.unknown: %v", err)
	}
	var got events.DeadLetter
	if err := events.Unmarshal(msg.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Reason != "undecodable" || string(got.Data) != "junk" || got.Time.IsZero() {
		t.Errorf("dead letter = %+v", got)
	}
}

func TestConnectFailsFast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	port := testenv.FreePort(t)
	_, err := bus.Connect(ctx, "nats://user:secret@127.0.0.1:"+strconv.Itoa(port), "t", nil)
	if err == nil {
		t.Fatal("Connect to a closed port: got nil error")
	}
	if s := err.Error(); strings.Contains(s, "secret") {
		t.Errorf("error leaks the password: %s", s)
	}
}

func TestDeadLetterOfOversizedMessage(t *testing.T) {
	conn := testenv.Conn(t, testenv.NATS(t))
	ctx := context.Background()
	big := make([]byte, conn.NC.MaxPayload())
	dl := &events.DeadLetter{Kind: "x", Service: "test", Reason: "oversized", Data: big}
	if err := conn.DeadLetter(ctx, dl); err != nil {
		t.Fatalf("DeadLetter of a message at the payload limit: %v", err)
	}
	stream, _ := conn.JS.Stream(ctx, events.StreamDead)
	msg, err := stream.GetLastMsgForSubject(ctx, events.DeadSubject("x"))
	if err != nil {
		t.Fatal(err)
	}
	var got events.DeadLetter
	if err := events.Unmarshal(msg.Data, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Data) != 0 || !strings.Contains(got.Error, "not kept") {
		t.Errorf("dead letter kept %d bytes, error %q", len(got.Data), got.Error)
	}
}
