package bench

import (
	"context"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
)

func TestJetStreamConsume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := JetStreamConsume(ctx, testenv.NATS(t), 2000, 64)
	if err != nil {
		t.Fatalf("JetStreamConsume: %v", err)
	}
	if res.Msgs != 2000 || res.PerSecond <= 0 {
		t.Errorf("result = %+v", res)
	}
}
