package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestInheritedDescriptorsDoNotReachTheSandbox starts ironclaw with an
// extra open descriptor that is not close-on-exec, as a shell, a CI runner
// or a supervisor may leave one: a host file opened for writing. The
// workload must not find it among its descriptors nor write through it.
func TestInheritedDescriptorsDoNotReachTheSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	hostFile := filepath.Join(t.TempDir(), "host-file")
	f, err := os.OpenFile(hostFile, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// ExtraFiles become descriptors of ironclaw without close-on-exec;
	// the low numbers are likely to be reused by ironclaw's own, so the
	// file and a pipe's write end get 40 and 41.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	script := fdScript + `
	python3 -c 'import os
for fd in (40, 41):
    try: os.write(fd, b"escaped")
    except OSError: pass'
	exit 0`
	cmd := exec.CommandContext(ctx, bin, "--root", root, "run", "--", "sh", "-c", script)
	cmd.ExtraFiles = make([]*os.File, 37)
	cmd.ExtraFiles = append(cmd.ExtraFiles, f, pw)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	pw.Close()
	if err != nil {
		t.Fatalf("ironclaw run: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	if out.Len() != 0 {
		t.Errorf("the workload holds descriptors it was not given:\n%s", out.String())
	}
	if b, err := os.ReadFile(hostFile); err != nil || len(b) != 0 {
		t.Errorf("the workload wrote %q to a host file through an inherited descriptor (%v)", b, err)
	}
	pr.SetReadDeadline(time.Now().Add(time.Second))
	if b, _ := pr.Read(make([]byte, 64)); b != 0 {
		t.Errorf("the workload wrote %d bytes to a host pipe through an inherited descriptor", b)
	}
}

// TestMountTargetsStayInTheSandbox: a workload that can write a
// persistent workspace (--workdir) may leave symlinks there for the next
// sandbox on it. A --mount target below such a symlink must not make
// that sandbox's init create anything on the host: the guest path is the
// sandbox's, resolved inside its root, never a host path. The symlink
// here points at a world-writable host directory, where init's host uid
// could create entries.
func TestMountTargetsStayInTheSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	work, src := t.TempDir(), t.TempDir()
	// Not t.TempDir: its parent is searchable by root only.
	outside, err := os.MkdirTemp("", "ironclaw-outside-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	if err := os.Chmod(outside, 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("source"), 0o644); err != nil {
		t.Fatal(err)
	}
	// What an earlier sandbox on this workspace could have left.
	if err := os.Symlink(outside, filepath.Join(work, "planted")); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{src + ":/workspace/planted/dir", filepath.Join(src, "f") + ":/workspace/planted/file", src + ":/workspace/planted/a/b"} {
		r := ironclaw(t, nil, "run", "--workdir", work, "--mount", m, "--", "true")
		ents, err := os.ReadDir(outside)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			t.Errorf("--mount %s: the sandbox's init created %s on the host (exit %d, stderr %q)", m, filepath.Join(outside, e.Name()), r.code, r.stderr)
			os.RemoveAll(filepath.Join(outside, e.Name()))
		}
	}
}

// TestDaemonExecHoldsOnlyStdio: a command exec'd in a long-lived sandbox
// holds its three standard streams and nothing of init's (such as the
// workload cgroup's tasks file init places its launchers with).
func TestDaemonExecHoldsOnlyStdio(t *testing.T) {
	d := startDaemon(t, newRoot(t))
	if r := d.cli(nil, "sandbox", "create", "--name", "fds"); r.code != 0 {
		t.Fatalf("sandbox create: %d %s", r.code, r.stderr)
	}
	for _, user := range []string{"sandbox", "root"} {
		r := d.cli(nil, "sandbox", "exec", "--user", user, "fds", "--", "sh", "-c", fdScript)
		if r.code != 0 || r.stdout != "" {
			t.Errorf("exec as %s: the command holds descriptors it was not given (exit %d):\n%s%s", user, r.code, r.stdout, r.stderr)
		}
	}
}

// fdScript prints every descriptor of a command beyond 0, 1 and 2.
const fdScript = `for p in /proc/self/fd/*; do
	fd=${p##*/}
	case $fd in 0|1|2) continue;; esac
	if l=$(readlink $p); then echo "fd $fd -> $l"; fi
done`

// TestPlantedSymlinkCannotReplaceReservedPaths: a user mount may not
// replace what IronClaw builds (/etc, /proc, /dev, /tmp, /workspace). A
// symlink left in a persistent workspace ("planted -> ../etc") must not
// let a --mount target below /workspace land on the sandbox's /etc and
// hide its generated passwd, hosts and resolv.conf; the start fails,
// naming the mount.
func TestPlantedSymlinkCannotReplaceReservedPaths(t *testing.T) {
	testutil.RequireRoot(t)
	work, src := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "passwd"), []byte("mallory:x:0:0::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"../etc", "/etc", "../tmp", "../../dev"} {
		link := filepath.Join(work, "planted")
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		r := ironclaw(t, nil, "run", "--workdir", work, "--mount", src+":/workspace/planted", "--", "sh", "-c",
			"cat /etc/passwd; test -e /etc/hosts && test -e /etc/resolv.conf && echo generated-etc-present; mount | grep -c ' /etc \\| /tmp \\| /dev ' || true")
		if r.code == 0 && (strings.Contains(r.stdout, "mallory") || !strings.Contains(r.stdout, "generated-etc-present")) {
			t.Errorf("planted -> %s: a user mount replaced the sandbox's /etc:\n%s", target, r.stdout)
		}
		if r.code != 0 && !strings.Contains(r.stderr, "mount /workspace/planted:") {
			t.Errorf("planted -> %s: exit %d without saying why: %s", target, r.code, r.stderr)
		}
	}
}
