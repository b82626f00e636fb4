package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
	"github.com/perfpipe/perfpipe/services/agent"
)

// A program adds its own kind next to the built-in ones, then passes the
// registry to agent.New.
func ExampleRegistry_Register() {
	reg, err := agent.NewBuiltins(agent.Config{})
	if err != nil {
		panic(err)
	}
	upper := agent.HandlerFunc(func(
		ctx context.Context, req *events.WorkRequest,
	) (events.Payload, error) {
		var in struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal(req.Payload, &in); err != nil {
			return nil, agent.Permanentf("upper %s: %w", req.ID, err)
		}
		return json.Marshal(map[string]string{"text": strings.ToUpper(in.Text)})
	})
	err = reg.Register("upper", upper, agent.Options{CacheTTL: time.Hour})
	fmt.Println(reg.Kinds(), err)
	// Output: [csv http sleep upper] <nil>
}
