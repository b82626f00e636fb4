package agent

import (
	"testing"
	"time"
)

func TestRetryPolicyBackoff(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	tests := []struct {
		name     string
		p        RetryPolicy
		n        int
		min, max time.Duration
	}{
		{"first, no jitter", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: -1},
			1, ms(100), ms(100)},
		{"doubles", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: -1},
			3, ms(400), ms(400)},
		{"capped", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: -1},
			10, ms(1000), ms(1000)},
		{"far past the cap", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: -1},
			200, ms(1000), ms(1000)},
		{"jitter", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: 0.5},
			2, ms(100), ms(300)},
		{"jitter capped", RetryPolicy{Initial: ms(100), Max: ms(1000), Jitter: 0.5},
			5, ms(500), ms(1000)},
		{"defaults", RetryPolicy{}, 1, ms(100), ms(300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 100 {
				if got := tt.p.Backoff(tt.n); got < tt.min || got > tt.max {
					t.Fatalf("Backoff(%d) = %s, want %s to %s", tt.n, got, tt.min, tt.max)
				}
			}
		})
	}
}

func TestServicePolicyLayers(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		opts RetryPolicy
		want RetryPolicy
	}{
		{"package defaults", Config{}, RetryPolicy{},
			RetryPolicy{3, 200 * time.Millisecond, 30 * time.Second, 0.5}},
		{"agent-wide", Config{MaxAttempts: 5, RetryInitial: time.Second}, RetryPolicy{},
			RetryPolicy{5, time.Second, 30 * time.Second, 0.5}},
		{"kind options over agent-wide", Config{MaxAttempts: 5},
			RetryPolicy{MaxAttempts: 2, Jitter: -1},
			RetryPolicy{2, 200 * time.Millisecond, 30 * time.Second, -1}},
		{"config over kind options", Config{KindRetry: map[string]RetryPolicy{
			"k": {MaxAttempts: 7, Max: time.Second}}},
			RetryPolicy{MaxAttempts: 2, Initial: 10 * time.Millisecond},
			RetryPolicy{7, 10 * time.Millisecond, time.Second, 0.5}},
		{"other kind's override ignored", Config{KindRetry: map[string]RetryPolicy{
			"other": {MaxAttempts: 7}}}, RetryPolicy{},
			RetryPolicy{3, 200 * time.Millisecond, 30 * time.Second, 0.5}},
		{"cap raised to initial", Config{RetryMax: time.Second},
			RetryPolicy{Initial: 2 * time.Second},
			RetryPolicy{3, 2 * time.Second, 2 * time.Second, 0.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testService(tt.cfg)
			got := s.policy(registered{kind: "k", opts: Options{Retry: tt.opts}})
			if got != tt.want {
				t.Errorf("policy() = %+v, want %+v", got, tt.want)
			}
		})
	}
}
