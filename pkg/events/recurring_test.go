package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRecurringValidate(t *testing.T) {
	work := WorkTemplate{Kind: "echo"}
	tests := []struct {
		name string
		def  Recurring
		want string // "" for valid, else a part of the error
	}{
		{"every", Recurring{ID: "a", Every: Duration(time.Minute), Work: work}, ""},
		{"cron", Recurring{ID: "a", Cron: "*/5 * * * *", Work: work}, ""},
		{"descriptor", Recurring{ID: "a", Cron: "@hourly", Work: work}, ""},
		{"zone", Recurring{ID: "a", Cron: "CRON_TZ=Europe/Paris 0 3 * * *", Work: work}, ""},
		{"bad cron", Recurring{ID: "a", Cron: "*/5 * * *", Work: work}, `cron "*/5 * * *"`},
		{"bad field", Recurring{ID: "a", Cron: "0 25 * * *", Work: work}, "cron"},
		{"february 30", Recurring{ID: "a", Cron: "0 0 30 2 *", Work: work}, "no tick"},
		{"april 31", Recurring{ID: "a", Cron: "0 0 31 4 *", Work: work}, "no tick"},
		{"february 29", Recurring{ID: "a", Cron: "0 0 29 2 *", Work: work}, ""},
		{"old definition", Recurring{ID: "a", Cron: "0 0 29 2 *", Work: work,
			Created: time.Date(2001, 3, 1, 0, 0, 0, 0, time.UTC)}, ""},
		{"both", Recurring{ID: "a", Cron: "@daily", Every: Duration(time.Hour), Work: work},
			"not both"},
		{"none", Recurring{ID: "a", Work: work}, "no schedule"},
		{"too often", Recurring{ID: "a", Every: Duration(time.Millisecond), Work: work},
			"at least 1s"},
		{"bad id", Recurring{ID: "a.b", Every: Duration(time.Minute), Work: work}, "recurring id"},
		{"no kind", Recurring{ID: "a", Every: Duration(time.Minute)}, "no kind"},
		{"bad priority", Recurring{ID: "a", Every: Duration(time.Minute),
			Work: WorkTemplate{Kind: "echo", Priority: 10}}, "priority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.def.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (!errors.Is(err, ErrInvalid) ||
				!strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestLatestTick(t *testing.T) {
	base := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	every := Recurring{ID: "e", Every: Duration(10 * time.Second), Created: base}
	cron := Recurring{ID: "c", Cron: "*/5 * * * *"}
	tests := []struct {
		name       string
		def        Recurring
		after, now time.Time
		want       time.Time
	}{
		{"every none due", every, base, base.Add(9 * time.Second), time.Time{}},
		{"every one due", every, base, base.Add(10 * time.Second), base.Add(10 * time.Second)},
		{"every latest of many", every, base, base.Add(95 * time.Second),
			base.Add(90 * time.Second)},
		{"every before anchor", every, base.Add(-25 * time.Second), base.Add(-5 * time.Second),
			base.Add(-10 * time.Second)},
		{"cron none due", cron, base, base.Add(4 * time.Minute), time.Time{}},
		{"cron latest of many", cron, base, base.Add(62 * time.Minute),
			base.Add(60 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.def.Schedule()
			if err != nil {
				t.Fatal(err)
			}
			if got := LatestTick(s, tt.after, tt.now); !got.Equal(tt.want) {
				t.Errorf("LatestTick(%v, %v) = %v, want %v", tt.after, tt.now, got, tt.want)
			}
		})
	}
}

func TestRecurringRequest(t *testing.T) {
	tick := time.Unix(1700000000, 0)
	def := Recurring{ID: "r", Every: Duration(time.Minute), Work: WorkTemplate{
		Kind: "echo", Priority: 4, Payload: Payload(`{"a":1}`), Timeout: Duration(time.Second),
	}}
	req := def.Request(tick)
	if req.ID != "r.1700000000" || !req.NotBefore.Equal(tick) || req.Priority != 4 ||
		!req.Deadline.Equal(tick.Add(time.Second)) || string(req.Payload) != `{"a":1}` {
		t.Errorf("Request = %+v, want id r.1700000000, the tick, priority 4, deadline +1s", req)
	}
}

func TestRecurringCodec(t *testing.T) {
	in := Recurring{ID: "r", Cron: "@daily", Created: time.Unix(1700000000, 0).UTC(),
		Work: WorkTemplate{Kind: "echo", Payload: Payload(`{"a":1}`)}}
	for _, enc := range []struct {
		name    string
		marshal func(Event) ([]byte, error)
	}{{"msgpack", Marshal}, {"json", MarshalJSON}} {
		data, err := enc.marshal(&in)
		if err != nil {
			t.Fatalf("%s: %v", enc.name, err)
		}
		var out Recurring
		if err := Unmarshal(data, &out); err != nil {
			t.Fatalf("%s: %v", enc.name, err)
		}
		if out.ID != in.ID || out.Cron != in.Cron || !out.Created.Equal(in.Created) ||
			string(out.Work.Payload) != `{"a":1}` {
			t.Errorf("%s: got %+v, want %+v", enc.name, out, in)
		}
	}
}
