//go:build race

package e2e

// raceEnabled builds the server with the race detector too.
const raceEnabled = true
