// Package monitor samples the CPU and memory use of the machine and of every
// perfpipe process on it, and publishes one events.Resource per process per
// interval on perf.resource.<host>.<service>, where the aggregator joins the
// readings to the snapshots of the same service.
//
// A process counts as a perfpipe process when its executable's base name is
// Config.ProcessName; the monitor's own process always counts, so that it
// also reports itself when linked into another binary or a test. Each
// process is labelled with the service it runs, taken from its command line
// (see Config.Service for the rule). A process that appears while the
// monitor runs is reported from its second reading on: the first one only
// starts the measurement of its CPU use.
//
// Create a Service with New and call Run, which samples on a ticker until
// its context is cancelled. Latest returns the last readings for health
// output.
//
// NOTE: the host CPU figure comes from gopsutil's cpu.Percent with a zero
// interval, whose previous reading is state shared by the whole process:
// two monitors in one process, or other callers of cpu.Percent, shorten
// each other's measuring intervals.
package monitor
