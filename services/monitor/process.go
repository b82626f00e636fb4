package monitor

import (
	"cmp"
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v3/process"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// tracked is a perfpipe process watched across readings. The gopsutil
// process keeps its last CPU times, so that Percent(0) measures the time
// since the previous reading.
type tracked struct {
	pid int32
	// created tells a process apart from a later one with the same pid.
	created int64 // ms since the epoch
	proc    *process.Process
	service string
	// primed is set once Percent has been called, so the next call covers
	// one interval instead of returning 0.
	primed bool
}

// serviceLabel names the service a perfpipe process runs from its command
// line: the first argument after the program that does not start with '-',
// made safe as a subject token, or DefaultService when there is none.
func serviceLabel(cmdline []string) string {
	if len(cmdline) == 0 {
		return DefaultService
	}
	for _, arg := range cmdline[1:] {
		if arg != "" && !strings.HasPrefix(arg, "-") {
			return events.Token(arg)
		}
	}
	return DefaultService
}

// scan lists the perfpipe processes running now, sorted by pid. It keeps
// the processes it already tracks, adds new ones and forgets vanished ones.
func (s *Service) scan(ctx context.Context) []*tracked {
	pids, err := process.PidsWithContext(ctx)
	if err != nil {
		if ok, n := s.scanWarn.allow(time.Now()); ok {
			s.log.Warn("process list not readable, reporting only the own process",
				"suppressed", n, "err", err)
		}
	}
	if !slices.Contains(pids, s.self) {
		pids = append(pids, s.self)
	}

	seen := make(map[int32]*tracked, len(s.procs))
	for _, pid := range pids {
		if t := s.track(ctx, pid); t != nil {
			seen[pid] = t
		}
	}
	s.procs = seen

	list := make([]*tracked, 0, len(seen))
	for _, t := range seen {
		list = append(list, t)
	}
	slices.SortFunc(list, func(a, b *tracked) int { return cmp.Compare(a.pid, b.pid) })
	return list
}

// track returns the tracked process of pid, known or new, or nil when pid
// is not a perfpipe process, has exited, or cannot be read. Only perfpipe
// processes have their create time read: most of the process table is
// judged by its name alone.
func (s *Service) track(ctx context.Context, pid int32) *tracked {
	p := &process.Process{Pid: pid}
	if t, ok := s.procs[pid]; ok {
		created, err := p.CreateTimeWithContext(ctx)
		if err == nil && created == t.created {
			return t
		}
		// Exited, or the pid now belongs to another process.
	}

	self := pid == s.self
	if !self && !s.isPerfpipe(ctx, p) {
		return nil
	}
	created, err := p.CreateTimeWithContext(ctx)
	if err != nil {
		s.skip(pid, "create time", err)
		return nil
	}
	service, err := s.label(ctx, p, self)
	if err != nil {
		s.skip(pid, "command line", err)
		return nil
	}
	return &tracked{pid: pid, created: created, proc: p, service: service}
}

// isPerfpipe reports whether p's name, or the base name of its executable,
// is the configured process name. The executable is checked too because a
// process started through a symlink is named after the link.
func (s *Service) isPerfpipe(ctx context.Context, p *process.Process) bool {
	if name, err := p.NameWithContext(ctx); err == nil && name == s.cfg.ProcessName {
		return true
	}
	exe, err := p.ExeWithContext(ctx)
	if err != nil {
		return false
	}
	// A binary replaced by an upgrade while running reads as deleted.
	exe = strings.TrimSuffix(exe, " (deleted)")
	return filepath.Base(exe) == s.cfg.ProcessName
}

// label returns the service label of p; the monitor's own process takes
// Config.Service when it is set.
func (s *Service) label(ctx context.Context, p *process.Process, self bool) (string, error) {
	if self && s.cfg.Service != "" {
		return s.cfg.Service, nil
	}
	cmdline, err := p.CmdlineSliceWithContext(ctx)
	if err != nil {
		return "", err
	}
	return serviceLabel(cmdline), nil
}

// readProcess fills the process figures of r from t. It reports false when
// there is no reading: the first call for a process only primes its CPU
// times, and a process that exited or cannot be read is forgotten.
func (s *Service) readProcess(ctx context.Context, t *tracked, r *events.Resource) bool {
	cpuPct, err := t.proc.PercentWithContext(ctx, 0)
	if err != nil {
		s.forget(t, "cpu times", err)
		return false
	}
	mem, err := t.proc.MemoryInfoWithContext(ctx)
	if err != nil {
		s.forget(t, "memory", err)
		return false
	}
	if !t.primed {
		t.primed = true
		return false
	}

	r.Service = t.service
	r.PID = t.pid
	r.CPUPercent = cpuPct
	r.RSSBytes = mem.RSS
	return true
}

// forget drops t after a failed read, so that a process still running is
// tracked afresh at the next reading.
func (s *Service) forget(t *tracked, what string, err error) {
	delete(s.procs, t.pid)
	s.skip(t.pid, what, err)
}

// skip logs at Debug why a process is left out, unless it simply exited.
func (s *Service) skip(pid int32, what string, err error) {
	if errors.Is(err, process.ErrorProcessNotRunning) || errors.Is(err, fs.ErrNotExist) {
		return
	}
	s.log.Debug("process skipped", "pid", pid, "reading", what, "err", err)
}
