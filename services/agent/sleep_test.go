package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

func TestSleepHandler(t *testing.T) {
	tests := []struct {
		name      string
		payload   string
		timeout   time.Duration
		want      string
		wantErr   bool
		permanent bool
	}{
		{name: "sleeps", payload: `{"ms": 5}`, want: `{"slept_ms":5}`},
		{name: "zero", payload: `{"ms": 0}`, want: `{"slept_ms":0}`},
		{name: "transient", payload: `{"ms": 1, "fail": "transient"}`, wantErr: true},
		{name: "permanent", payload: `{"ms": 1, "fail": "permanent"}`, wantErr: true,
			permanent: true},
		{name: "unknown fail", payload: `{"fail": "sometimes"}`, wantErr: true,
			permanent: true},
		{name: "negative", payload: `{"ms": -1}`, wantErr: true, permanent: true},
		{name: "overflow", payload: `{"ms": 9223372036854775807}`, wantErr: true,
			permanent: true},
		// Checked before sleeping: the short timeout would otherwise end it.
		{name: "unknown fail, long", payload: `{"ms": 3000, "fail": "bogus"}`,
			timeout: time.Second, wantErr: true, permanent: true},
		{name: "bad payload", payload: `{"seconds": 1}`, wantErr: true, permanent: true},
		{name: "empty payload", payload: ``, wantErr: true, permanent: true},
		{name: "cancelled", payload: `{"ms": 10000}`, timeout: 20 * time.Millisecond,
			wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			req := &events.WorkRequest{ID: "s1", Kind: "sleep", Payload: events.Payload(tt.payload)}

			out, err := sleepHandler{}.Handle(ctx, req)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Handle() error = %v, want error %v", err, tt.wantErr)
			}
			if got := IsPermanent(err); got != tt.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, got, tt.permanent)
			}
			if tt.timeout > 0 && !tt.permanent && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Handle() error = %v, want context.DeadlineExceeded", err)
			}
			if string(out) != tt.want {
				t.Errorf("Handle() output = %s, want %s", out, tt.want)
			}
		})
	}
}
