//go:build race

package smtpin

// raceEnabled is set in builds with the race detector, which makes byte
// by byte work (go-smtp's DATA reader) some 50 times slower: the memory
// test then moves less data.
const raceEnabled = true
