//go:build !race

package s3_test

// raceEnabled is set when the tests run under the race detector, whose
// bookkeeping distorts heap figures and slows every byte copied.
const raceEnabled = false
