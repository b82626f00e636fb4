package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
)

// TestComposeFile loads deploy/compose.yaml with the compose-spec loader
// and checks that every perfpipe service's command and PERFPIPE_ variables
// are ones the binary accepts, so the file cannot drift from the CLI.
func TestComposeFile(t *testing.T) {
	ctx := context.Background()
	opts, err := cli.NewProjectOptions([]string{"../../deploy/compose.yaml"},
		cli.WithProfiles([]string{"*"}), cli.WithoutEnvironmentResolution)
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}

	upFlags := upCommand().FlagSet
	checked := 0
	for name, svc := range project.Services {
		if svc.Image != "perfpipe:dev" {
			continue
		}
		checked++
		root := newRoot(io.Discard)
		if err := root.Parse(svc.Command); err != nil {
			t.Errorf("service %s: command %q: %v", name, svc.Command, err)
		}
		for key := range svc.Environment {
			flagName, ok := strings.CutPrefix(key, "PERFPIPE_")
			flagName = strings.ReplaceAll(strings.ToLower(flagName), "_", "-")
			if ok && upFlags.Lookup(flagName) == nil {
				t.Errorf("service %s: %s names no flag --%s", name, key, flagName)
			}
		}
	}
	if checked < 6 {
		t.Errorf("checked %d perfpipe services, want the five services and submit", checked)
	}
}
