package events

import "testing"

func TestMsgIDs(t *testing.T) {
	tests := []struct {
		id         string
		attempt    int
		replay     uint64
		want       string
		wantResult string
	}{
		{"w-1", 0, 0, "w-1", "result-w-1"},
		{"w-1", 1, 0, "w-1", "result-w-1"},
		{"w-1", 2, 0, "w-1.attempt2", "result-w-1"},
		{"job.7", 10, 0, "job.7.attempt10", "result-job.7"},
		{"w-1", 0, 42, "w-1.replay42", "result-w-1.replay42"},
		{"w-1", 3, 42, "w-1.replay42.attempt3", "result-w-1.replay42"},
	}
	for _, tt := range tests {
		req := &WorkRequest{ID: tt.id, Attempt: tt.attempt, Replay: tt.replay}
		if got := SubmitMsgID(req); got != tt.want {
			t.Errorf("SubmitMsgID(%+v) = %q, want %q", req, got, tt.want)
		}
		if got := ReadyMsgID(req); got != tt.want {
			t.Errorf("ReadyMsgID(%+v) = %q, want %q", req, got, tt.want)
		}
		if got := ResultMsgID(req); got != tt.wantResult {
			t.Errorf("ResultMsgID(%+v) = %q, want %q", req, got, tt.wantResult)
		}
	}
}
