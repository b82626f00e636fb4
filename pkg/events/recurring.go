package events

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// TypeRecurring is the event type of a recurring work definition.
const TypeRecurring Type = "work.recurring"

// MinEvery is the shortest interval a recurring definition may use.
const MinEvery = time.Second

// TickHorizon is how far ahead a cron schedule must have a tick: one
// that never fires in it (such as "0 0 30 2 *", February 30) is refused.
// It is the search limit of the cron parser's Next.
const TickHorizon = 5 * 365 * 24 * time.Hour

// maxCatchUpSteps bounds the walk over missed ticks in LatestTick.
const maxCatchUpSteps = 1 << 20

// Recurring defines work submitted again and again: every interval, or
// at the times of a cron expression. Exactly one of Cron and Every is set.
// The scheduler keeps definitions in a JetStream key-value bucket and
// submits Work once per tick with the ID "<ID>.<tick unix seconds>".
type Recurring struct {
	Meta
	// ID names the definition: letters, digits, '-' and '_'.
	ID string `msgpack:"id" json:"id"`
	// Cron is a standard five-field cron expression ("*/5 * * * *"),
	// or a descriptor such as "@hourly", read in UTC unless it starts
	// with CRON_TZ=<zone>.
	Cron string `msgpack:"cron,omitempty" json:"cron,omitempty"`
	// Every is the interval between ticks, at least MinEvery. Ticks fall
	// on Created plus whole intervals.
	Every Duration `msgpack:"every,omitempty" json:"every,omitempty"`
	// Work is the request submitted at each tick.
	Work WorkTemplate `msgpack:"work" json:"work"`
	// Paused definitions submit nothing until they are resumed.
	Paused bool `msgpack:"paused,omitempty" json:"paused,omitempty"`
	// Created is when the definition was made; the first tick is the
	// first one after it.
	Created time.Time `msgpack:"created" json:"created"`
}

// WorkTemplate is the part of a WorkRequest that a recurring definition
// fixes; ID, NotBefore and the trace are set at each tick.
type WorkTemplate struct {
	Kind     string      `msgpack:"kind" json:"kind"`
	Priority int         `msgpack:"priority,omitempty" json:"priority,omitempty"`
	Payload  Payload     `msgpack:"payload,omitempty" json:"payload,omitempty"`
	ReplyTo  string      `msgpack:"reply_to,omitempty" json:"reply_to,omitempty"`
	Cache    CachePolicy `msgpack:"cache,omitempty" json:"cache,omitempty"`
	// Timeout, when set, makes each request's Deadline its tick plus
	// Timeout.
	Timeout Duration `msgpack:"timeout,omitempty" json:"timeout,omitempty"`
}

// EventType implements Event.
func (*Recurring) EventType() Type { return TypeRecurring }

// Schedule gives the tick times of a definition.
type Schedule interface {
	// Next returns the first tick strictly after t, or the zero time when
	// there is none.
	Next(t time.Time) time.Time
}

// Validate checks the definition: its ID, one well-formed schedule, and
// a work template that makes valid requests.
func (r *Recurring) Validate() error {
	if !recurringID(r.ID) {
		return fmt.Errorf("%w: recurring id %q: want letters, digits, - or _", ErrInvalid, r.ID)
	}
	sched, err := r.Schedule()
	if err != nil {
		return err
	}
	if err := r.checkFires(sched); err != nil {
		return err
	}
	if r.Work.Kind == "" {
		return fmt.Errorf("%w: recurring %s: no kind of work", ErrInvalid, r.ID)
	}
	if r.Work.Timeout < 0 {
		return fmt.Errorf("%w: recurring %s: negative timeout %s", ErrInvalid, r.ID,
			r.Work.Timeout.Std())
	}
	req := r.Request(r.Created)
	if err := req.Validate(); err != nil {
		return fmt.Errorf("recurring %s: %w", r.ID, err)
	}
	return nil
}

// Schedule parses the definition's cron expression or interval.
func (r *Recurring) Schedule() (Schedule, error) {
	switch {
	case r.Cron != "" && r.Every != 0:
		return nil, fmt.Errorf("%w: recurring %s: set cron or every, not both", ErrInvalid, r.ID)
	case r.Cron != "":
		s, err := cron.ParseStandard(r.Cron)
		if err != nil {
			return nil, fmt.Errorf("%w: recurring %s: cron %q: %v", ErrInvalid, r.ID, r.Cron, err)
		}
		return utcSchedule{s}, nil
	case r.Every == 0:
		return nil, fmt.Errorf("%w: recurring %s: no schedule: set cron or every", ErrInvalid, r.ID)
	case r.Every.Std() < MinEvery:
		return nil, fmt.Errorf("%w: recurring %s: every %s: want at least %s",
			ErrInvalid, r.ID, r.Every.Std(), MinEvery)
	}
	anchor := r.Created
	if anchor.IsZero() {
		anchor = time.Unix(0, 0)
	}
	return everySchedule{anchor: anchor, every: r.Every.Std()}, nil
}

// checkFires refuses a schedule with no tick within TickHorizon of the
// definition's creation (or of now, when it has none).
func (r *Recurring) checkFires(s Schedule) error {
	from := r.Created
	if from.IsZero() {
		from = time.Now()
	}
	if !s.Next(from).IsZero() {
		return nil
	}
	return fmt.Errorf("%w: recurring %s: cron %q has no tick in the next %d years",
		ErrInvalid, r.ID, r.Cron, int(TickHorizon.Hours()/24/365))
}

// TickID is the ID of the request submitted at tick. Two instances firing
// the same tick build the same ID, so the stream keeps one of them.
func (r *Recurring) TickID(tick time.Time) string {
	return fmt.Sprintf("%s.%d", r.ID, tick.Unix())
}

// Request builds the work request of tick: ID TickID(tick), NotBefore the
// tick, and the template's fields.
func (r *Recurring) Request(tick time.Time) *WorkRequest {
	w := &r.Work
	req := &WorkRequest{
		ID: r.TickID(tick), Kind: w.Kind, Priority: w.Priority, NotBefore: tick,
		Payload: append(Payload(nil), w.Payload...), ReplyTo: w.ReplyTo, Cache: w.Cache,
	}
	if w.Timeout > 0 {
		req.Deadline = tick.Add(w.Timeout.Std())
	}
	return req
}

// LatestTick returns the last tick of s after after and at or before now,
// or the zero time when no tick falls in between. It is the one tick to
// fire when every tick since after was missed.
func LatestTick(s Schedule, after, now time.Time) time.Time {
	if e, ok := s.(everySchedule); ok {
		return e.latest(after, now)
	}
	var latest time.Time
	for t, i := s.Next(after), 0; !t.IsZero() && !t.After(now); t, i = s.Next(t), i+1 {
		latest = t
		if i == maxCatchUpSteps {
			break // a very long outage: fire the tick reached so far
		}
	}
	return latest
}

// utcSchedule reads a cron schedule in UTC, so that every instance sees the
// same ticks whatever its local zone; CRON_TZ still overrides it.
type utcSchedule struct{ s cron.Schedule }

func (u utcSchedule) Next(t time.Time) time.Time { return u.s.Next(t.UTC()) }

// everySchedule ticks at anchor plus whole multiples of every.
type everySchedule struct {
	anchor time.Time
	every  time.Duration
}

func (e everySchedule) Next(t time.Time) time.Time {
	d := t.Sub(e.anchor)
	k := d / e.every
	if d < 0 && d%e.every != 0 {
		k-- // floor, not truncation toward zero
	}
	return e.anchor.Add((k + 1) * e.every)
}

// latest is LatestTick without the walk.
func (e everySchedule) latest(after, now time.Time) time.Time {
	next := e.Next(after)
	if next.After(now) {
		return time.Time{}
	}
	return e.Next(now).Add(-e.every) // the last tick at or before now
}

// recurringID reports whether id can name a definition in a bucket key and
// a request ID.
func recurringID(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c == '-' || c == '_',
			c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}
