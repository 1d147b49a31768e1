package qemu

import "time"

// rdtsc reads the time-stamp counter (tsc_amd64.s).
func rdtsc() uint64

// HostTSCkHz measures the host's time-stamp counter rate against the
// monotonic clock over about window.
//
// Under TCG the guest's TSC is the host's (QEMU's rdtsc helper returns the
// host counter), but a guest kernel calibrates it against the emulated PIT,
// whose ticks follow host time: on a loaded host a descheduled QEMU skews
// both calibrations, the kernel marks the TSC unstable ("could not
// calculate TSC khz") and then waits forever for timer ticks. Handing the
// measured rate to the guest with tsc_early_khz= skips the calibration.
func HostTSCkHz(window time.Duration) uint64 {
	t0, c0 := sample()
	time.Sleep(window)
	t1, c1 := sample()
	ns := t1.Sub(t0).Nanoseconds()
	if ns <= 0 || c1 <= c0 {
		return 0
	}
	return (c1 - c0) * 1_000_000 / uint64(ns)
}

// sample pairs a TSC reading with a clock reading; of a few tries it keeps
// the one whose clock readings bracket the TSC most tightly, so a
// preemption between the two reads does not skew the result.
func sample() (time.Time, uint64) {
	best := time.Duration(1<<63 - 1)
	var at time.Time
	var tsc uint64
	for i := 0; i < 16; i++ {
		a := time.Now()
		c := rdtsc()
		b := time.Now()
		if d := b.Sub(a); d < best {
			best, at, tsc = d, a.Add(d/2), c
		}
	}
	return at, tsc
}
