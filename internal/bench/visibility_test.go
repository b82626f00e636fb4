package bench

import (
	"context"
	"testing"
	"time"

	"github.com/perfpipe/perfpipe/internal/testenv"
)

func TestVisibility(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Visibility(ctx, testenv.NATS(t), 3)
	if err != nil {
		t.Fatalf("Visibility: %v", err)
	}
	if res.Runs != 3 || res.Max <= 0 || res.P50 > res.Max {
		t.Errorf("result = %+v", res)
	}
}
