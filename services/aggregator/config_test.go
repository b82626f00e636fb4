package aggregator

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	got := Config{}.withDefaults()
	want := Config{
		Durable: "aggregator", Window: time.Minute, Resolution: time.Second,
		MaxFuture: 5 * time.Second, PublishInterval: time.Second,
		SnapshotTTL: 5 * time.Minute, IdleExpiry: 10 * time.Minute,
		StoreTimeout: 2 * time.Second, MaxAckPending: 10_000,
	}
	if got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // empty for a valid config
	}{
		{"zero", Config{}, ""},
		{"sub-second", Config{Window: 10 * time.Second, Resolution: 100 * time.Millisecond}, ""},
		{"negative window", Config{Window: -time.Second}, "window -1s is negative"},
		{"negative ttl", Config{SnapshotTTL: -1}, "snapshot ttl"},
		{"ragged window", Config{Window: 1500 * time.Millisecond}, "not a multiple"},
		{"too many buckets", Config{Window: time.Hour, Resolution: time.Millisecond},
			"more than 10000 buckets"},
		{"bad durable", Config{Durable: "a.b"}, "durable"},
		{"negative ack pending", Config{MaxAckPending: -1}, "max ack pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
