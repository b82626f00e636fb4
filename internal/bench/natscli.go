package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NatsCLIConsume runs `nats bench js pub async` then `nats bench js
// consume` with the nats CLI at path against url, and returns the
// consumer's stats line as the CLI prints it, so that its figure can stand
// beside perfpipe's in the same run. The stream it creates is deleted.
func NatsCLIConsume(ctx context.Context, path, url string, msgs, size int) (string, error) {
	const stream = "PERFPIPE_NATS_BENCH"
	common := []string{"-s", url, "bench", "js"}
	n := strconv.Itoa(msgs)
	pub := append(common, "pub", "async", "--create", "--stream", stream, "--msgs", n,
		"--size", strconv.Itoa(size)+"B", "--no-progress", "perfpipe.natsbench")
	consume := append(common, "consume", "--stream", stream, "--msgs", n, "--no-progress")
	defer deleteStream(url, stream)

	if _, err := exec.CommandContext(ctx, path, pub...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("nats bench js pub: %w", err)
	}
	out, err := exec.CommandContext(ctx, path, consume...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nats bench js consume: %w: %s", err, bytes.TrimSpace(out))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.Contains(line, "msgs/sec") {
			return line, nil
		}
	}
	return "", fmt.Errorf("nats bench js consume printed no rate: %s", bytes.TrimSpace(out))
}

func deleteStream(url, stream string) {
	nc, err := nats.Connect(url)
	if err != nil {
		return
	}
	defer nc.Close()
	if js, err := jetstream.New(nc); err == nil {
		_ = js.DeleteStream(context.Background(), stream)
	}
}
