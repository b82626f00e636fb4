package agent

// SleepHandler is the built-in sleep kind, for tests that wrap it.
var SleepHandler Handler = sleepHandler{}

// RemainderID names the batch that hands back items, for tests.
var RemainderID = remainderID
