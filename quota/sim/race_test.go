//go:build race

package sim

// raceEnabled trims the month replays to one seed under the race
// detector, which slows the single-goroutine replay about 27-fold (134 s
// for the five seeds against 5 s) and finds nothing in it; the quota
// package's concurrency test is where races are looked for. make unit runs
// TestMonthReplay once more without -race, with every seed.
const raceEnabled = true
