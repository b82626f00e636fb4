package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// SchemaVersion is the version of the event schemas in this package. A
// decoder accepts events of this version or older and rejects newer ones.
const SchemaVersion = 1

// Type names the kind of an event on the wire.
type Type string

// Event types.
const (
	TypeWorkRequest Type = "work.request"
	TypeBatch       Type = "work.batch"
	TypeResult      Type = "work.result"
	TypeDeadLetter  Type = "work.dead"
	TypeTiming      Type = "perf.timing"
	TypeTimingBatch Type = "perf.batch"
	TypeResource    Type = "perf.resource"
	TypeSnapshot    Type = "perf.snapshot"
)

// Header names set on every message perfpipe publishes.
const (
	HeaderType        = "Perfpipe-Type"
	HeaderSchema      = "Perfpipe-Schema"
	HeaderContentType = "Content-Type"
	ContentMsgpack    = "application/msgpack"
	ContentJSON       = "application/json"
)

// Errors returned by Unmarshal. Match them with errors.Is.
var (
	// ErrDecode means the bytes are neither valid msgpack nor valid JSON
	// for the event.
	ErrDecode = errors.New("events: undecodable message")
	// ErrWrongType means the message decoded but carries another event type.
	ErrWrongType = errors.New("events: wrong event type")
	// ErrSchema means the message has a schema version newer than this
	// package understands.
	ErrSchema = errors.New("events: unsupported schema version")
	// ErrInvalid means the event decoded but breaks a rule of its type,
	// such as a priority outside 0-9.
	ErrInvalid = errors.New("events: invalid event")
)

// Meta is embedded in every event and stamped by Marshal.
type Meta struct {
	Type Type `msgpack:"type" json:"type,omitempty"`
	V    int  `msgpack:"v" json:"v,omitempty"`
}

func (m *Meta) meta() *Meta { return m }

// Event is implemented by every event type of this package.
type Event interface {
	// EventType is the type stamped on the wire.
	EventType() Type
	meta() *Meta
}

// Marshal stamps ev with its type and the schema version and encodes it
// with msgpack.
func Marshal(ev Event) ([]byte, error) {
	m := ev.meta()
	m.Type = ev.EventType()
	m.V = SchemaVersion
	b, err := msgpack.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", m.Type, err)
	}
	return b, nil
}

// MarshalJSON stamps ev like Marshal and encodes it as JSON, for people and
// HTTP clients.
func MarshalJSON(ev Event) ([]byte, error) {
	m := ev.meta()
	m.Type = ev.EventType()
	m.V = SchemaVersion
	return json.Marshal(ev)
}

// IsJSON reports whether data looks like a JSON object rather than msgpack.
// A msgpack map never starts with '{' (0x7b is a positive fixint), so the
// first non-space byte decides.
func IsJSON(data []byte) bool {
	t := bytes.TrimLeft(data, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && utf8.Valid(t)
}

// Unmarshal decodes data, msgpack or JSON, into ev and checks its type and
// schema version. A JSON message may leave out type and version; a msgpack
// one must carry both.
func Unmarshal(data []byte, ev Event) error {
	want := ev.EventType()
	if len(data) == 0 {
		return fmt.Errorf("%w: empty %s", ErrDecode, want)
	}

	jsonIn := IsJSON(data)
	if !jsonIn && json.Valid(data) {
		return fmt.Errorf("%w: %s: want a JSON object, got %.20s", ErrDecode, want, data)
	}
	if jsonIn {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(ev); err != nil {
			return fmt.Errorf("%w: %s as json: %v", ErrDecode, want, err)
		}
	} else if err := msgpack.Unmarshal(data, ev); err != nil {
		return fmt.Errorf("%w: %s as msgpack: %v", ErrDecode, want, err)
	}

	m := ev.meta()
	switch {
	case m.Type == "" && jsonIn:
		m.Type = want
	case m.Type != want:
		return fmt.Errorf("%w: got %q, want %q", ErrWrongType, m.Type, want)
	}
	switch {
	case m.V == 0 && jsonIn:
		m.V = SchemaVersion
	case m.V < 1 || m.V > SchemaVersion:
		return fmt.Errorf("%w: %s v%d, this build reads v1-v%d",
			ErrSchema, want, m.V, SchemaVersion)
	}
	return nil
}

// PeekID returns the "id" field of a JSON or msgpack message that did not
// decode as a whole, so that a dead letter can still name its request.
// It returns "" when there is no readable id.
func PeekID(data []byte) string {
	var v struct {
		ID string `json:"id" msgpack:"id"`
	}
	if IsJSON(data) {
		_ = json.Unmarshal(data, &v)
	} else {
		_ = msgpack.Unmarshal(data, &v)
	}
	return v.ID
}

// Reason is the short dead-letter reason for an error from Unmarshal or
// Validate: "undecodable", "wrong type", "unsupported schema" or "invalid
// request". Other errors give "invalid request" when they wrap ErrInvalid
// and "undecodable" otherwise.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrWrongType):
		return "wrong type"
	case errors.Is(err, ErrSchema):
		return "unsupported schema"
	case errors.Is(err, ErrInvalid):
		return "invalid request"
	}
	return "undecodable"
}
