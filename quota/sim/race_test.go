//go:build race

package sim

// raceEnabled trims the month replays under the race detector, which
// slows the single-goroutine replay tenfold and finds nothing in it; the
// quota package's concurrency test is where races are looked for.
const raceEnabled = true
