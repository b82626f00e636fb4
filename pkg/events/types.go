package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Duration is a time.Duration that travels as integer nanoseconds in msgpack
// and reads, in JSON, either a Go duration string ("250ms", "2s") or a number
// of nanoseconds. It writes JSON as a duration string.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"2s\" or nanoseconds", b)
	}
	*d = Duration(n)
	return nil
}

// Payload is a work item's input or output: a JSON document kept as raw
// bytes. It travels as msgpack binary and is embedded as-is in JSON.
type Payload []byte

// MarshalJSON embeds the raw document, or null when empty.
func (p Payload) MarshalJSON() ([]byte, error) {
	if len(p) == 0 {
		return []byte("null"), nil
	}
	if !json.Valid(p) {
		return nil, fmt.Errorf("payload is not valid json")
	}
	return p, nil
}

// UnmarshalJSON keeps a copy of the raw document.
func (p *Payload) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*p = nil
		return nil
	}
	*p = append((*p)[:0], b...)
	return nil
}

// Canonical returns the payload re-encoded with sorted object keys and no
// insignificant space, so that equal documents hash equally.
func (p Payload) Canonical() ([]byte, error) {
	if len(p) == 0 {
		return []byte("null"), nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical payload: %w", err)
	}
	return json.Marshal(v)
}
