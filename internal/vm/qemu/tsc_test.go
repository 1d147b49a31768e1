package qemu

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHostTSCkHz compares the measured TSC rate with what the host kernel
// reports in /proc/cpuinfo ("cpu MHz", which on a host without frequency
// scaling is the TSC's rate): they must agree within 2%.
func TestHostTSCkHz(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		if HostTSCkHz(time.Millisecond) != 0 {
			t.Fatal("non-amd64 must report 0")
		}
		return
	}
	got := HostTSCkHz(20 * time.Millisecond)
	if got < 100_000 || got > 10_000_000 {
		t.Fatalf("TSC rate %d kHz is implausible", got)
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			t.Fatal(err)
		}
		ratio := float64(got) / (mhz * 1000)
		t.Logf("measured %d kHz, cpuinfo %.3f MHz, ratio %.4f", got, mhz, ratio)
		if strings.Contains(string(b), "constant_tsc") && (ratio < 0.98 || ratio > 1.02) {
			t.Errorf("measured TSC rate %d kHz differs from cpuinfo's %.3f MHz by more than 2%%", got, mhz)
		}
		return
	}
}
