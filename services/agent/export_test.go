package agent

// SleepHandler is the built-in sleep kind, for tests that wrap it.
var SleepHandler Handler = sleepHandler{}
