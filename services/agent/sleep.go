package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// sleepRequest is the payload of the sleep kind.
type sleepRequest struct {
	// MS is how long to sleep, in milliseconds.
	MS int64 `json:"ms"`
	// Fail, when "transient" or "permanent", fails the item that way
	// after the sleep.
	Fail string `json:"fail,omitempty"`
}

// maxSleepMS caps one sleep at a day, well inside time.Duration's range.
const maxSleepMS = 24 * 60 * 60 * 1000

// sleepOutput is the output of the sleep kind.
type sleepOutput struct {
	SleptMS int64 `json:"slept_ms"`
}

// errSleepTransient is the failure a sleep request asks for with
// "fail": "transient".
var errSleepTransient = errors.New("sleep: transient failure requested")

// sleepHandler sleeps for the requested time: a stand-in for work in
// tests and load runs.
type sleepHandler struct{}

// Handle implements Handler.
func (sleepHandler) Handle(ctx context.Context, req *events.WorkRequest) (events.Payload, error) {
	var in sleepRequest
	if err := decodePayload(req.Payload, &in); err != nil {
		return nil, fmt.Errorf("sleep %s: %w", req.ID, err)
	}
	if in.MS < 0 || in.MS > maxSleepMS {
		return nil, Permanentf("sleep %s: ms %d outside 0-%d", req.ID, in.MS, maxSleepMS)
	}
	if in.Fail != "" && in.Fail != "transient" && in.Fail != "permanent" {
		return nil, Permanentf("sleep %s: fail %q is not \"transient\" or \"permanent\"",
			req.ID, in.Fail)
	}

	t := time.NewTimer(time.Duration(in.MS) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, fmt.Errorf("sleep %s: %w", req.ID, ctx.Err())
	}

	switch in.Fail {
	case "transient":
		return nil, errSleepTransient
	case "permanent":
		return nil, Permanentf("sleep %s: permanent failure requested", req.ID)
	}
	return json.Marshal(sleepOutput{SleptMS: in.MS})
}

// decodePayload reads a JSON payload into v, refusing unknown fields. Its
// errors are permanent: the same payload fails the same way every time.
func decodePayload(p events.Payload, v any) error {
	if len(p) == 0 {
		return Permanentf("bad payload: empty")
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Permanentf("bad payload: %w", err)
	}
	return nil
}
