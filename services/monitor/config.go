package monitor

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Defaults applied to a Config field left zero.
const (
	DefaultInterval    = time.Second
	DefaultProcessName = "perfpipe"
	// DefaultService labels a process whose command line names no service.
	DefaultService = "perfpipe"
)

// MinInterval is the shortest sampling interval: CPU times advance in clock
// ticks of about 10 ms, so shorter intervals read mostly noise.
const MinInterval = 50 * time.Millisecond

// Config configures the monitor.
type Config struct {
	// Interval is the time between two readings, and the span each CPU
	// percentage covers. Zero means DefaultInterval (1 s); otherwise it must
	// be at least MinInterval.
	Interval time.Duration

	// ProcessName is the executable base name that marks a perfpipe
	// process, compared with the process name and with the base name of its
	// executable's path. Zero means DefaultProcessName ("perfpipe").
	ProcessName string

	// Service labels the monitor's own process. Empty means the label is
	// derived from the command line, as for every other process: the first
	// argument after the program that does not start with '-'
	// ("perfpipe agent --nats-url ..." runs "agent", "perfpipe up" runs
	// "up"), or DefaultService when there is none. A flag given as two
	// arguments before the subcommand ("perfpipe --log debug agent") makes
	// its value the label, so such flags belong after the subcommand or in
	// the -flag=value form. It must be a valid subject token.
	Service string

	// Host names this machine in readings and subjects. Empty means
	// os.Hostname(), or "localhost" when that fails.
	Host string
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.ProcessName == "" {
		c.ProcessName = DefaultProcessName
	}
	if c.Host == "" {
		c.Host = hostname()
	}
	return c
}

// Validate reports the first field of c that is out of range. Zero fields
// are valid: they mean their default.
func (c Config) Validate() error {
	switch {
	case c.Interval < 0 || (c.Interval > 0 && c.Interval < MinInterval):
		return fmt.Errorf("monitor config: interval %s: want 0 or at least %s",
			c.Interval, MinInterval)
	case strings.ContainsRune(c.ProcessName, os.PathSeparator):
		return fmt.Errorf("monitor config: process name %q: want a base name, not a path",
			c.ProcessName)
	case c.Service != "" && !events.ValidToken(c.Service):
		return fmt.Errorf("monitor config: service %q: not a valid subject token", c.Service)
	}
	return nil
}

// hostname returns the machine's name, or "localhost" when it cannot be read.
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}
