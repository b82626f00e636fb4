package batcher

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // empty: valid
	}{
		{"zero value", Config{}, ""},
		{"per-kind override", Config{PerKind: map[string]Limits{"http": {MaxCount: 4}}}, ""},
		{"durable with a dot", Config{Durable: "a.b"}, "durable"},
		{"negative count", Config{Default: Limits{MaxCount: -1}}, "negative limit"},
		{"negative per-kind linger", Config{
			PerKind: map[string]Limits{"http": {Linger: -time.Second}},
		}, "limits of http"},
		{"per-kind key not a token", Config{
			PerKind: map[string]Limits{"a b": {}},
		}, "not a subject token"},
		{"ack wait not above linger", Config{
			AckWait: time.Second, Default: Limits{Linger: time.Second},
		}, "ack wait"},
		{"ack wait not above per-kind linger", Config{
			AckWait: time.Second, PerKind: map[string]Limits{"slow": {Linger: 2 * time.Second}},
		}, "ack wait"},
		{"max ack pending below per-kind count", Config{
			MaxAckPending: 10, PerKind: map[string]Limits{"big": {MaxCount: 11}},
		}, "max ack pending"},
		{"negative publishers", Config{Publishers: -1}, "negative"},
		{"negative retry delay", Config{RetryDelay: -1}, "negative"},
		{"adaptive defaults", Config{Adaptive: &AdaptiveConfig{}}, ""},
		{"adaptive bounds out of order", Config{
			Adaptive: &AdaptiveConfig{MinCount: 10, MaxCount: 5},
		}, "count bounds"},
		{"adaptive negative target", Config{
			Adaptive: &AdaptiveConfig{TargetP95: -time.Second},
		}, "target p95"},
		{"max ack pending below adaptive max count", Config{
			MaxAckPending: 100, Adaptive: &AdaptiveConfig{MaxCount: 101},
		}, "max ack pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	got := Config{PerKind: map[string]Limits{"big": {MaxBytes: 1 << 20}}}.withDefaults()
	if got.Durable != DefaultDurable || got.Default != DefaultLimits() ||
		got.MaxAckPending != DefaultMaxAckPending || got.AckWait != DefaultAckWait ||
		got.Publishers != DefaultPublishers || got.ShutdownTimeout != DefaultShutdownTimeout {
		t.Errorf("withDefaults() = %+v, want the documented defaults", got)
	}

	want := Limits{MaxCount: DefaultMaxCount, MaxBytes: 1 << 20, Linger: DefaultLinger}
	if l := got.policy().Limits("big"); l != want {
		t.Errorf("limits of big = %+v, want %+v", l, want)
	}
	if l := got.policy().Limits("other"); l != DefaultLimits() {
		t.Errorf("limits of other = %+v, want %+v", l, DefaultLimits())
	}
}
