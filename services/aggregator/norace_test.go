//go:build !race

package aggregator

// raceEnabled says the race detector is on: long measurements skip.
const raceEnabled = false
