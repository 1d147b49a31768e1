package seccomp

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
	"golang.org/x/sys/unix"
)

// helperVMMOwner is the owner of a QEMU in TestVMMWatchdog: it launches
// QEMU (argv: qemu binary, then "watchdog", "pdeathsig" or "detached"),
// prints "qemu PID" and waits to be killed.
func helperVMMOwner(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "vmm-owner: want QEMU's path and a mode")
		return 2
	}
	cfg := VMMConfig{
		Kind: QEMU, Binary: args[0], Launcher: os.Args[0], Stderr: os.Stderr,
		Args:        []string{"-machine", "none", "-S", "-nodefaults", "-display", "none"},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	switch args[1] {
	case "watchdog":
		cfg.SysProcAttr.Pdeathsig, cfg.Watchdog = syscall.SIGKILL, true
	case "pdeathsig":
		cfg.SysProcAttr.Pdeathsig = syscall.SIGKILL
	case "detached":
	default:
		fmt.Fprintf(os.Stderr, "vmm-owner: mode %q\n", args[1])
		return 2
	}
	cmd, err := LaunchVMM(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm-owner:", err)
		return 1
	}
	fmt.Printf("qemu %d\n", cmd.Process.Pid)
	cmd.Wait()
	return 0
}

// exited reports whether the process behind pidfd has exited, waiting at
// most d.
func exited(t *testing.T, pidfd int, d time.Duration) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(d.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
}

// TestVMMWatchdog SIGKILLs the owner of a QEMU that has dropped to its own
// uid (-runas): with the watchdog QEMU and the watchdog are gone within a
// bound; with only a parent-death signal (which -runas clears) and when
// detached, QEMU outlives its owner.
func TestVMMWatchdog(t *testing.T) {
	testutil.RequireRoot(t)
	qemu := testutil.RequireCommand(t, "qemu-system-x86_64")
	for _, mode := range []string{"watchdog", "pdeathsig", "detached", "vmm-exits"} {
		t.Run(mode, func(t *testing.T) {
			ownerMode := mode
			if mode == "vmm-exits" {
				ownerMode = "watchdog"
			}
			owner := exec.Command(os.Args[0], qemu, ownerMode)
			owner.Env = append(os.Environ(), helperEnv+"=vmm-owner")
			// A file, not a pipe: QEMU (and the watchdog) inherit it.
			stderrPath := filepath.Join(t.TempDir(), "stderr")
			errFile, err := os.Create(stderrPath)
			if err != nil {
				t.Fatal(err)
			}
			defer errFile.Close()
			owner.Stderr = errFile
			stderr := func() string { b, _ := os.ReadFile(stderrPath); return string(b) }
			out, err := owner.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := owner.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				owner.Process.Kill()
				owner.Wait()
			}()
			var pid int
			line, err := bufio.NewReader(out).ReadString('\n')
			if _, serr := fmt.Sscanf(line, "qemu %d", &pid); err != nil || serr != nil {
				owner.Process.Kill()
				owner.Wait()
				t.Fatalf("owner: %q, %v (stderr %s)", line, err, stderr())
			}
			qfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(qfd)
			defer unix.PidfdSendSignal(qfd, unix.SIGKILL, nil, 0)
			// Wait for QEMU to drop to its uid: that clears its
			// parent-death signal.
			want := "\nUid:\t" + strconv.Itoa(VMMUID(pid)) + "\t"
			for i := 0; ; i++ {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				if err == nil && strings.Contains(string(b), want) {
					break
				}
				if i == 200 {
					t.Fatalf("QEMU %d never ran as uid %d: %v\n%s\nstderr %s", pid, VMMUID(pid), err, b, stderr())
				}
				time.Sleep(25 * time.Millisecond)
			}
			wd, err := FindWatchdog(pid)
			if err != nil {
				t.Fatal(err)
			}
			if (wd != 0) != (ownerMode == "watchdog") {
				t.Fatalf("QEMU %d has watchdog %d in mode %s", pid, wd, mode)
			}
			wfd := -1
			if wd != 0 {
				if wfd, err = unix.PidfdOpen(wd, 0); err != nil {
					t.Fatal(err)
				}
				defer unix.Close(wfd)
				// QEMU cannot signal its watchdog: another uid.
				if err := watchdogOK(wd, pid); err != nil {
					t.Fatal(err)
				}
			}
			if mode == "vmm-exits" {
				// QEMU ends first: its watchdog ends with it, and the
				// PID (also the process group's ID) is free again.
				if err := unix.PidfdSendSignal(qfd, unix.SIGKILL, nil, 0); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if !exited(t, wfd, 5*time.Second) {
					t.Fatalf("watchdog %d outlived its QEMU %d by 5s", wd, pid)
				}
				t.Logf("watchdog %d gone %v after its QEMU", wd, time.Since(start))
				return
			}
			start := time.Now()
			owner.Process.Kill()
			owner.Wait()
			// The watchdog takes milliseconds; a second shows the others
			// survive.
			bound := time.Second
			if mode == "watchdog" {
				bound = 5 * time.Second
			}
			gone := exited(t, qfd, bound)
			t.Logf("mode %s: QEMU %d gone %t %v after its owner's SIGKILL; watchdog %d", mode, pid, gone, time.Since(start), wd)
			switch {
			case mode == "watchdog" && !gone:
				t.Fatalf("QEMU %d outlived its SIGKILLed owner by %v despite its watchdog %d", pid, bound, wd)
			case mode != "watchdog" && gone:
				t.Fatalf("QEMU %d (%s) died with its owner", pid, mode)
			}
			if wfd >= 0 && !exited(t, wfd, 5*time.Second) {
				t.Fatalf("watchdog %d outlived QEMU by 5s", wd)
			}
			if mode != "watchdog" {
				// The owner is gone, QEMU still runs: stop it here.
				if err := unix.PidfdSendSignal(qfd, unix.SIGKILL, nil, 0); err != nil {
					t.Fatal(err)
				}
				if !exited(t, qfd, 5*time.Second) {
					t.Fatalf("QEMU %d survived SIGKILL", pid)
				}
			}
		})
	}
}

// TestParseSync: the launcher's report of its watchdog, and what follows.
func TestParseSync(t *testing.T) {
	for _, c := range []struct {
		in      string
		pid     int
		rest    string
		wantErr bool
	}{
		{"", 0, "", false},
		{"ironclaw-vmm-launch: exec: no such file", 0, "ironclaw-vmm-launch: exec: no such file", false},
		{"watchdog 42\n", 42, "", false},
		{"watchdog 42\nironclaw-vmm-launch: exec failed", 42, "ironclaw-vmm-launch: exec failed", false},
		{"watchdog 42", 0, "", true},
		{"watchdog -1\n", 0, "", true},
		{"watchdog x\n", 0, "", true},
	} {
		pid, rest, err := parseSync([]byte(c.in))
		if pid != c.pid || string(rest) != c.rest || (err != nil) != c.wantErr {
			t.Errorf("parseSync(%q) = %d, %q, %v; want %d, %q, error %t", c.in, pid, rest, err, c.pid, c.rest, c.wantErr)
		}
	}
}

// BenchmarkLaunchVMMWatchdog is what the watchdog adds to a QEMU start
// (QEMU -machine none through the launcher, until LaunchVMM returns, then
// SIGKILL and wait), against "plain" (no watchdog) measured in the same
// run: compare the two medians over several runs.
func BenchmarkLaunchVMMWatchdog(b *testing.B) {
	testutil.RequireRoot(b)
	qemu := testutil.RequireCommand(b, "qemu-system-x86_64")
	for _, watchdog := range []bool{false, true} {
		name := "plain"
		if watchdog {
			name = "watchdog"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				cmd, err := LaunchVMM(context.Background(), VMMConfig{
					Kind: QEMU, Binary: qemu, Launcher: os.Args[0], Watchdog: watchdog,
					Args: []string{"-machine", "none", "-S", "-nodefaults", "-display", "none"},
				})
				if err != nil {
					b.Fatal(err)
				}
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
	}
}

// TestWatchdogBadDescriptors: the launcher refuses a -watchdog-fd that is
// not an inherited descriptor, and the watchdog one without its two.
func TestWatchdogBadDescriptors(t *testing.T) {
	var out strings.Builder
	if code := LauncherMain([]string{"-kind", "qemu", "-watchdog-fd", "1", "--", "/bin/true"}, &out); code != 125 || !strings.Contains(out.String(), "-watchdog-fd 1") {
		t.Errorf("launcher with -watchdog-fd 1: exit %d, %q; want 125 naming the flag", code, out.String())
	}
	out.Reset()
	if code := LauncherMain([]string{"-watchdog"}, &out); code != 1 || !strings.Contains(out.String(), "-owner-fd -1") {
		t.Errorf("watchdog without descriptors: exit %d, %q; want 1 naming them", code, out.String())
	}
}
