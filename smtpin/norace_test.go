//go:build !race

package smtpin

// raceEnabled is set in builds with the race detector.
const raceEnabled = false
