package events

import "strings"

// Stream names. Each stream captures the subjects of one stage.
const (
	StreamWork      = "PERFPIPE_WORK"
	StreamReady     = "PERFPIPE_READY"
	StreamBatches   = "PERFPIPE_BATCHES"
	StreamResults   = "PERFPIPE_RESULTS"
	StreamDead      = "PERFPIPE_DEAD"
	StreamTelemetry = "PERFPIPE_TELEMETRY"
	StreamSnapshots = "PERFPIPE_SNAPSHOTS"
)

// Subject prefixes. A full subject adds one or two tokens.
const (
	SubmitPrefix      = "work.submit."
	ReadyPrefix       = "work.ready."
	BatchPrefix       = "work.batch."
	ResultPrefix      = "work.result."
	DeadPrefix        = "work.dead."
	TimingPrefix      = "perf.timing."
	BatchTimingPrefix = "perf.batch."
	ResourcePrefix    = "perf.resource."
	SnapshotPrefix    = "perf.snapshot."
)

// Wildcard subjects, one per stream, and the snapshot wildcard.
const (
	SubmitAll      = SubmitPrefix + ">"
	ReadyAll       = ReadyPrefix + ">"
	BatchAll       = BatchPrefix + ">"
	ResultAll      = ResultPrefix + ">"
	DeadAll        = DeadPrefix + ">"
	TimingAll      = TimingPrefix + ">"
	BatchTimingAll = BatchTimingPrefix + ">"
	ResourceAll    = ResourcePrefix + ">"
	SnapshotAll    = SnapshotPrefix + ">"
	// FinalAll matches the final snapshots only, not the partial ones.
	FinalAll = SnapshotPrefix + "*.*" + FinalSuffix
)

// FinalSuffix ends the subject of a final snapshot.
const FinalSuffix = ".final"

// SubmitSubject is where users publish work requests of a kind.
func SubmitSubject(kind string) string { return SubmitPrefix + Token(kind) }

// ReadySubject is where the scheduler releases due work of a kind.
func ReadySubject(kind string) string { return ReadyPrefix + Token(kind) }

// BatchSubject is where the batcher publishes batches of a kind.
func BatchSubject(kind string) string { return BatchPrefix + Token(kind) }

// ResultSubject is where agents publish results of a kind.
func ResultSubject(kind string) string { return ResultPrefix + Token(kind) }

// DeadSubject is where services dead-letter messages of a kind.
func DeadSubject(kind string) string { return DeadPrefix + Token(kind) }

// TimingSubject is where a service publishes timings of an operation.
func TimingSubject(service, op string) string {
	return TimingPrefix + Token(service) + "." + Token(op)
}

// BatchTimingSubject is where a service publishes its timing batches.
func BatchTimingSubject(service string) string { return BatchTimingPrefix + Token(service) }

// ResourceSubject is where the monitor publishes readings of a service on
// a host.
func ResourceSubject(host, service string) string {
	return ResourcePrefix + Token(host) + "." + Token(service)
}

// SnapshotSubject is where the aggregator publishes a group's snapshots.
func SnapshotSubject(service, op string) string {
	return SnapshotPrefix + Token(service) + "." + Token(op)
}

// FinalSubject is where the aggregator publishes a group's final
// snapshots, one per closed window: SnapshotSubject plus FinalSuffix, so
// that subscribers of SnapshotAll see both kinds.
func FinalSubject(service, op string) string {
	return SnapshotSubject(service, op) + FinalSuffix
}

// LastToken returns the part of subject after its last dot: the kind of a
// work subject.
func LastToken(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// ValidToken reports whether s can stand as one subject token unchanged:
// non-empty, printable ASCII, and no dot, space or wildcard.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			return false
		}
	}
	return true
}

// ValidSubject reports whether s is a subject a message can be published
// on: dot-separated valid tokens, no wildcards.
func ValidSubject(s string) bool {
	for _, tok := range strings.Split(s, ".") {
		if !ValidToken(tok) {
			return false
		}
	}
	return true
}

// Token makes s safe as one subject token, replacing every byte that is not
// allowed with '_'. The empty string becomes "_".
func Token(s string) string {
	if ValidToken(s) {
		return s
	}
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i := range b {
		if !tokenByte(b[i]) {
			b[i] = '_'
		}
	}
	return string(b)
}

func tokenByte(c byte) bool {
	return c > ' ' && c < 0x7f && c != '.' && c != '*' && c != '>'
}
