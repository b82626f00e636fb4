package aggregator

import (
	"time"

	"github.com/perfpipe/perfpipe/pkg/events"
)

// Group names used for resource readings.
const (
	resourceOp   = "resource"
	hostsService = "host"
)

// procKey identifies a process across hosts.
type procKey struct {
	host string
	pid  int32
}

type procReading struct {
	at  time.Time
	cpu float64
	rss uint64
}

type hostReading struct {
	at       time.Time
	cpu, mem float64
}

// resources keeps the latest reading of each process and of each host.
type resources struct {
	procs map[procKey]procReading
	hosts map[string]hostReading
}

func newResources() *resources {
	return &resources{procs: map[procKey]procReading{}, hosts: map[string]hostReading{}}
}

// add keeps ev when it is newer than what is held for its process and
// host. A reading with PID 0 describes the host only.
func (r *resources) add(ev *events.Resource) {
	if h, ok := r.hosts[ev.Host]; !ok || !ev.Time.Before(h.at) {
		r.hosts[ev.Host] = hostReading{ev.Time, ev.HostCPUPercent, ev.HostMemUsedPerc}
	}
	if ev.PID == 0 {
		return
	}
	k := procKey{ev.Host, ev.PID}
	if p, ok := r.procs[k]; !ok || !ev.Time.Before(p.at) {
		r.procs[k] = procReading{ev.Time, ev.CPUPercent, ev.RSSBytes}
	}
}

// figures forgets readings older than since (Unix ns), then sums the
// processes and averages the hosts.
func (r *resources) figures(sinceNanos int64) *events.ResourceFigures {
	since := time.Unix(0, sinceNanos)
	var f events.ResourceFigures
	for k, p := range r.procs {
		if p.at.Before(since) {
			delete(r.procs, k)
			continue
		}
		f.CPUPercent += p.cpu
		f.RSSBytes += p.rss
		f.Processes++
	}
	for k, h := range r.hosts {
		if h.at.Before(since) {
			delete(r.hosts, k)
			continue
		}
		f.HostCPUPercent += h.cpu
		f.HostMemUsedPerc += h.mem
	}
	if n := float64(len(r.hosts)); n > 0 {
		f.HostCPUPercent /= n
		f.HostMemUsedPerc /= n
	}
	return &f
}
