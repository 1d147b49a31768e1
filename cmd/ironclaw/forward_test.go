package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// build builds ironclaw and ironclawd side by side, as installed, and
// returns the directory.
func build(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := testutil.BuildCommands(dir, "ironclaw", "ironclawd"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run runs bin with args and the environment env added, and returns its
// stdout, stderr and exit status.
func run(t *testing.T, env []string, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// TestDaemonCommandsForwardToIronclawd: the lean ironclaw lists the
// daemon-side commands, and runs them as the ironclawd next to it (also
// when started through a symlink): `ironclaw serve --help` is ironclawd's
// help, and a global flag before the command (--root) reaches ironclawd,
// whose exit status is ironclaw's.
func TestDaemonCommandsForwardToIronclawd(t *testing.T) {
	dir := build(t)
	ic, icd := filepath.Join(dir, "ironclaw"), filepath.Join(dir, "ironclawd")

	help, _, code := run(t, nil, ic, "--help")
	for _, want := range []string{"serve       Run the daemon", "mcp         MCP gateway", "approvals   List, inspect", "audit       Show the MCP tool calls", "run         Run a command"} {
		if code != 0 || !strings.Contains(help, want) {
			t.Errorf("ironclaw --help (status %d) lacks %q:\n%s", code, want, help)
		}
	}

	want, _, _ := run(t, nil, icd, "serve", "--help")
	if !strings.Contains(want, "ironclawd serve [flags]") || !strings.Contains(want, "--max-sandboxes") {
		t.Fatalf("ironclawd serve --help:\n%s", want)
	}
	link := filepath.Join(t.TempDir(), "ic")
	if err := os.Symlink(ic, link); err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{ic, link} {
		got, stderr, code := run(t, nil, bin, "serve", "--help")
		if code != 0 || got != want {
			t.Errorf("%s serve --help (status %d) is not ironclawd's:\n%s\nstderr: %s", bin, code, got, stderr)
		}
	}

	// --root before the command: ironclawd's audit looks for the store in
	// that root (a custom root is its own data directory) and fails there
	// with status 125.
	root := t.TempDir()
	_, stderr, code := run(t, nil, ic, "--root", root, "audit", "--json")
	if code != 125 || !strings.Contains(stderr, "ironclawd: no audit log") || !strings.Contains(stderr, filepath.Join(root, "ironclaw.db")) {
		t.Errorf("ironclaw --root %s audit: status %d, stderr %q; want ironclawd's error about that root's store", root, code, stderr)
	}
	_, stderr, code = run(t, []string{"IRONCLAW_ROOT=" + root}, ic, "audit", "--json")
	if code != 125 || !strings.Contains(stderr, filepath.Join(root, "ironclaw.db")) {
		t.Errorf("IRONCLAW_ROOT=%s ironclaw audit: status %d, stderr %q", root, code, stderr)
	}
}

// TestForwardWithoutIronclawd: without ironclawd next to ironclaw or in
// $PATH, a daemon-side command fails with status 125 and an error that
// names where ironclawd was looked for and how to build it; gc still
// reclaims (it needs no daemon).
func TestForwardWithoutIronclawd(t *testing.T) {
	src := build(t)
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(src, "ironclaw"))
	if err != nil {
		t.Fatal(err)
	}
	ic := filepath.Join(dir, "ironclaw")
	if err := os.WriteFile(ic, data, 0o755); err != nil {
		t.Fatal(err)
	}
	path := "PATH=" + t.TempDir() // no ironclawd in it
	for _, args := range [][]string{{"serve"}, {"--root", t.TempDir(), "serve", "--help"}, {"mcp", "serve"}, {"approvals"}, {"audit"}} {
		out, stderr, code := run(t, []string{path}, ic, args...)
		for _, want := range []string{"ironclawd not found", filepath.Join(dir, "ironclawd"), "$PATH", "go build -o bin/ ./cmd/..."} {
			if code != 125 || !strings.Contains(stderr, want) {
				t.Errorf("ironclaw %v without ironclawd: status %d, stderr %q; want 125 and %q", args, code, stderr, want)
			}
		}
		if out != "" {
			t.Errorf("ironclaw %v without ironclawd printed %q", args, out)
		}
	}

	// The same ironclaw finds ironclawd in $PATH.
	got, stderr, code := run(t, []string{"PATH=" + src}, ic, "serve", "--help")
	if code != 0 || !strings.Contains(got, "ironclawd serve [flags]") {
		t.Errorf("ironclaw serve --help with ironclawd in $PATH: status %d\n%s\n%s", code, got, stderr)
	}

	t.Run("gc", func(t *testing.T) {
		testutil.RequireRoot(t)
		root := testroot.New(t)
		out, stderr, code := run(t, []string{path + ":/usr/sbin:/usr/bin:/sbin:/bin"}, ic, "--root", root, "gc")
		if code != 0 || !strings.Contains(out, "reclaimed 0 sandbox(es)") {
			t.Errorf("ironclaw gc without ironclawd: status %d\n%s\n%s", code, out, stderr)
		}
	})
}

// TestForwardToLeanIronclawd: an ironclawd that is the lean ironclaw (a
// symlink, a hard link or a copy of it) does not execute itself forever:
// the command fails at once with status 125, saying why, and the variable
// that marks a forwarded run does not reach what ironclawd starts.
func TestForwardToLeanIronclawd(t *testing.T) {
	src := build(t)
	data, err := os.ReadFile(filepath.Join(src, "ironclaw"))
	if err != nil {
		t.Fatal(err)
	}
	install := func(t *testing.T, how string) string {
		dir := t.TempDir()
		ic := filepath.Join(dir, "ironclaw")
		if err := os.WriteFile(ic, data, 0o755); err != nil {
			t.Fatal(err)
		}
		icd := filepath.Join(dir, "ironclawd")
		switch how {
		case "symlink":
			err = os.Symlink("ironclaw", icd)
		case "hard link":
			err = os.Link(ic, icd)
		case "copy":
			err = os.WriteFile(icd, data, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
		return ic
	}
	path := "PATH=" + t.TempDir()
	for _, how := range []string{"symlink", "hard link", "copy"} {
		t.Run(how, func(t *testing.T) {
			ic := install(t, how)
			for _, args := range [][]string{{"audit", "--json"}, {"serve", "--help"}} {
				var o, e bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				cmd := exec.CommandContext(ctx, ic, args...)
				cmd.Env = append(os.Environ(), path)
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				cancel()
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					t.Fatalf("ironclaw %v with ironclawd a %s of it: still running after 20s (it executes itself)", args, how)
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 125 {
					t.Errorf("ironclaw %v with ironclawd a %s of it: %v, want status 125\n%s", args, how, err, e.String())
				}
				if !strings.Contains(e.String(), "ironclawd") {
					t.Errorf("ironclaw %v with ironclawd a %s of it: stderr %q does not say what is wrong", args, how, e.String())
				}
			}
		})
	}

	// The real ironclawd does not pass the mark on: its own commands run.
	ic := filepath.Join(src, "ironclaw")
	out, stderr, code := run(t, []string{"IRONCLAW_FORWARDED=1"}, filepath.Join(src, "ironclawd"), "serve", "--help")
	if code != 0 || !strings.Contains(out, "ironclawd serve [flags]") {
		t.Errorf("ironclawd serve --help with the mark set: status %d\n%s\n%s", code, out, stderr)
	}
	out, stderr, code = run(t, nil, ic, "serve", "--help")
	if code != 0 || !strings.Contains(out, "ironclawd serve [flags]") {
		t.Errorf("ironclaw serve --help: status %d\n%s\n%s", code, out, stderr)
	}
}
