package events

import "testing"

func TestAttemptMsgIDs(t *testing.T) {
	tests := []struct {
		id      string
		attempt int
		want    string
	}{
		{"w-1", 0, "w-1"},
		{"w-1", 1, "w-1"},
		{"w-1", 2, "w-1.attempt2"},
		{"job.7", 10, "job.7.attempt10"},
	}
	for _, tt := range tests {
		if got := SubmitMsgID(tt.id, tt.attempt); got != tt.want {
			t.Errorf("SubmitMsgID(%q, %d) = %q, want %q", tt.id, tt.attempt, got, tt.want)
		}
		if got := ReadyMsgID(tt.id, tt.attempt); got != tt.want {
			t.Errorf("ReadyMsgID(%q, %d) = %q, want %q", tt.id, tt.attempt, got, tt.want)
		}
	}
}
