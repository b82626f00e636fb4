package broker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestStartRequiresStoreDir(t *testing.T) {
	if _, err := Start(Config{Port: -1}); err == nil {
		t.Fatal("Start without StoreDir: got nil error")
	}
}

// TestRestartKeepsStreams checks that the store folder keeps JetStream
// data across a restart, which `perfpipe up` relies on.
func TestRestartKeepsStreams(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	withServer := func(fn func(js jetstream.JetStream)) {
		srv, err := Start(Config{Port: -1, StoreDir: dir})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		defer srv.Shutdown()
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		fn(js)
	}

	withServer(func(js jetstream.JetStream) {
		cfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "s", []byte("kept")); err != nil {
			t.Fatal(err)
		}
	})
	withServer(func(js jetstream.JetStream) {
		s, err := js.Stream(ctx, "S")
		if err != nil {
			t.Fatalf("stream after restart: %v", err)
		}
		msg, err := s.GetMsg(ctx, 1)
		if err != nil || string(msg.Data) != "kept" {
			t.Errorf("message after restart = %v, %v; want kept", msg, err)
		}
	})
}
