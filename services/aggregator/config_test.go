package aggregator

import (
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
)

func TestConfigDefaults(t *testing.T) {
	got := Config{}.withDefaults()
	want := Config{
		Durable: "aggregator", Resolution: 10 * time.Second,
		Windows:         []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute},
		AllowedLateness: 5 * time.Second, MaxFuture: 5 * time.Second,
		PublishInterval: time.Second, CheckpointInterval: time.Second,
		CheckpointBucket: "perfpipe_aggregator", SnapshotTTL: 5 * time.Minute,
		IdleExpiry: 10 * time.Minute, MaxGroups: 10_000, Partitions: 1,
		StoreTimeout: 2 * time.Second, MaxAckPending: 250_000,
	}
	if diff := gocmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestConfigWindowsSortedCopy(t *testing.T) {
	windows := []time.Duration{5 * time.Minute, time.Minute}
	got := Config{Windows: windows}.withDefaults().Windows
	if got[0] != time.Minute || windows[0] != 5*time.Minute {
		t.Errorf("windows %v from %v, want sorted in a copy", got, windows)
	}
}

func TestConfigValidate(t *testing.T) {
	w := func(ds ...time.Duration) []time.Duration { return ds }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // empty for a valid config
	}{
		{"zero", Config{}, ""},
		{"fast", fastConfig("x"), ""},
		{"negative lateness", Config{AllowedLateness: -time.Second}, "allowed lateness -1s"},
		{"negative ttl", Config{SnapshotTTL: -1}, "snapshot ttl"},
		{"window not positive", Config{Windows: w(-time.Minute)}, "not positive"},
		{"ragged window", Config{Windows: w(15 * time.Second)}, "multiple of resolution"},
		{"view not made of finals", Config{Windows: w(time.Minute, 90*time.Second)},
			"multiple of the final window"},
		{"window twice", Config{Windows: w(time.Minute, time.Minute)}, "listed twice"},
		{"too many buckets", Config{Windows: w(time.Hour), Resolution: time.Second},
			"3600 buckets"},
		{"too many finals", Config{Windows: w(time.Minute, 48*time.Hour)}, "2880 final"},
		{"lateness over window", Config{AllowedLateness: 2 * time.Minute}, "longer than"},
		{"idle expiry too short", Config{IdleExpiry: time.Second}, "idle expiry"},
		{"one group", Config{MaxGroups: 1}, "max groups 1"},
		{"partition out of range", Config{Partitions: 2, Partition: 2}, "partition 2"},
		{"negative partition", Config{Partition: -1}, "partition -1"},
		{"bad durable", Config{Durable: "a.b"}, "durable"},
		{"bad bucket", Config{CheckpointBucket: "a b"}, "checkpoint bucket"},
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

func TestConsumerName(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "aggregator"},
		{Config{Durable: "agg", Partitions: 3, Partition: 1}, "agg-p1of3"},
	}
	for _, tt := range tests {
		if got := tt.cfg.withDefaults().consumerName(); got != tt.want {
			t.Errorf("consumerName(%+v) = %q, want %q", tt.cfg, got, tt.want)
		}
	}
}
