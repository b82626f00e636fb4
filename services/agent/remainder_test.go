package agent_test

import (
	"regexp"
	"testing"

	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
)

func TestRemainderID(t *testing.T) {
	two := []events.WorkRequest{{ID: "a"}, {ID: "b"}}
	first := agent.RemainderID("b-sleep-1-3-0000abcd", two)
	tests := []struct {
		name  string
		id    string
		items []events.WorkRequest
		want  string // a pattern
	}{
		{"batcher batch", "b-sleep-1-3-0000abcd", two,
			`^b-sleep-1-3-0000abcd\.rest1-[0-9a-f]{16}$`},
		{"remainder of a remainder", first, two,
			`^b-sleep-1-3-0000abcd\.rest2-[0-9a-f]{16}$`},
		{"rest-like text kept", "b-x.restful", two, `^b-x\.restful\.rest1-[0-9a-f]{16}$`},
		{"no items", "batch-1", nil, `^batch-1\.rest1-[0-9a-f]{16}$`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := agent.RemainderID(tt.id, tt.items)
			if !regexp.MustCompile(tt.want).MatchString(got) {
				t.Errorf("RemainderID(%q) = %q, want a match of %s", tt.id, got, tt.want)
			}
		})
	}
}

// TestRemainderIDIdentifiesItems checks that the remainder's ID, its
// Nats-Msg-Id, is the same for the same items and differs otherwise.
func TestRemainderIDIdentifiesItems(t *testing.T) {
	ab := []events.WorkRequest{{ID: "a"}, {ID: "b"}}
	tests := []struct {
		name  string
		items []events.WorkRequest
		same  bool
	}{
		{"same items", []events.WorkRequest{{ID: "a"}, {ID: "b"}}, true},
		{"first attempt numbered", []events.WorkRequest{{ID: "a", Attempt: 1}, {ID: "b"}}, true},
		{"fewer items", []events.WorkRequest{{ID: "a"}}, false},
		{"other order", []events.WorkRequest{{ID: "b"}, {ID: "a"}}, false},
		{"a retry", []events.WorkRequest{{ID: "a", Attempt: 2}, {ID: "b"}}, false},
		{"a replay", []events.WorkRequest{{ID: "a", Replay: 7}, {ID: "b"}}, false},
		{"ids run together", []events.WorkRequest{{ID: "ab"}}, false},
	}
	want := agent.RemainderID("batch-1", ab)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := agent.RemainderID("batch-1", tt.items)
			if (got == want) != tt.same {
				t.Errorf("RemainderID of %v = %q, of a, b %q; want same %t", tt.items, got,
					want, tt.same)
			}
		})
	}
}
