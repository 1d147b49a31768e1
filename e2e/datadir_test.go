package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/store"
)

// TestDaemonAfterReboot: the daemon's store is in a data directory that
// outlives the runtime root. After a "reboot" (every sandbox process
// killed, its kernel objects reclaimed as a reboot discards them, and a
// fresh root), a daemon on the old data directory starts, forgets the rows
// of the sandboxes that are gone, and serves: their IDs can be created
// again. A second daemon on another root sharing the data directory is
// refused.
func TestDaemonAfterReboot(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	before := newRoot(t)
	d := startDaemon(t, before, "--data-dir", data)
	ctx := ctxT(t)
	var pids []int
	for _, id := range []string{"a", "b"} {
		sb, err := d.c.Create(ctx, api.CreateRequest{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, sb.InitPID)
	}
	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v %v; want mode 0700", fi, err)
	}
	if _, err := os.Stat(datadir.Path(before)); !os.IsNotExist(err) {
		t.Fatalf("a store in the runtime root: %v", err)
	}

	// The reboot: the daemon and every sandbox process die.
	d.kill()
	for _, pid := range pids {
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
			t.Fatal(err)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, 10_000)
		unix.Close(pidfd)
		if n != 1 || err != nil {
			t.Fatalf("init %d did not exit: %d %v", pid, n, err)
		}
	}
	// Their kernel objects go as a reboot drops them; gc is pointed at
	// another (empty) data directory so the rows stay.
	gc := ironclaw(t, nil, "--root", before, "--data-dir", filepath.Join(t.TempDir(), "none"), "gc")
	if gc.code != 0 || !strings.Contains(gc.stdout, "reclaimed 2 sandbox") || strings.Contains(gc.stdout, "daemon record") {
		t.Fatalf("gc: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	st, err := store.Open(ctx, datadir.Path(data))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := st.Sandboxes(ctx)
	st.Close()
	if err != nil || len(rows) != 2 {
		t.Fatalf("rows before the restart: %+v, %v; want a and b", rows, err)
	}

	after := newRoot(t)
	d2 := startDaemon(t, after, "--data-dir", data)
	l, err := d2.c.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 0 {
		t.Errorf("sandboxes after the reboot: %+v, want none", l)
	}
	if !strings.Contains(d2.log.String(), "did not survive the daemon restart") {
		t.Errorf("daemon log does not say the sandboxes were gone:\n%s", d2.log.String())
	}
	st, err = store.Open(ctx, datadir.Path(data))
	if err != nil {
		t.Fatal(err)
	}
	rows, err = st.Sandboxes(ctx)
	st.Close()
	if err != nil || len(rows) != 0 {
		t.Fatalf("rows after the restart: %+v, %v; want none", rows, err)
	}
	// It serves: the IDs are free again and a sandbox runs.
	if _, err := d2.c.Create(ctx, api.CreateRequest{ID: "a"}); err != nil {
		t.Fatalf("create a after the reboot: %v", err)
	}
	if out, _, es := run(t, d2.c, "a", nil, "echo", "after the reboot"); es.ExitCode != 0 || out != "after the reboot\n" {
		t.Errorf("exec in a: %q %+v", out, es)
	}

	// One daemon per store: another root with the same data directory
	// is refused.
	other := newRoot(t)
	if r := ironclaw(t, nil, "--root", other, "--data-dir", data, "serve", "--socket", filepath.Join(other, "other.sock")); r.code == 0 || !strings.Contains(r.stderr, "another ironclaw daemon") {
		t.Errorf("second daemon on the data directory: %d %s", r.code, r.stderr)
	}
}

// TestDaemonRefusesStrandedStore: a store an earlier IronClaw left in the
// state root, with the data directory elsewhere, stops the daemon before it
// starts anything (its records of live sandboxes may be in that store),
// with the command that moves it; the daemon starts once it is moved.
func TestDaemonRefusesStrandedStore(t *testing.T) {
	root := newRoot(t)
	data := filepath.Join(t.TempDir(), "data")
	ctx := ctxT(t)
	st, err := store.Open(ctx, datadir.Path(root))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AppendAudit(ctx, &store.AuditRecord{Server: "s", Tool: "before-upgrade", Decision: store.DecisionAllowed}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	r := ironclaw(t, nil, "--root", root, "--data-dir", data, "serve", "--socket", filepath.Join(root, "ironclaw.sock"))
	if r.code == 0 || !strings.Contains(r.stderr, "stop every ironclaw daemon and gateway") || !strings.Contains(r.stderr, "mv -n "+datadir.Path(root)+"* "+data+"/") {
		t.Fatalf("daemon beside a stranded store: %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(datadir.Path(data)); !os.IsNotExist(err) {
		t.Fatalf("the refused daemon made a store in the data directory: %v", err)
	}
	// audit reads nothing from the new place and says why.
	a := ironclaw(t, nil, "--root", root, "--data-dir", data, "audit")
	if a.code == 0 || !strings.Contains(a.stderr, "no audit log") || !strings.Contains(a.stderr, "mv -n") {
		t.Errorf("audit beside a stranded store: %d %s", a.code, a.stderr)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(datadir.Path(root)+suffix, datadir.Path(data)+suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, root, "--data-dir", data)
	if _, err := d.c.List(ctx, nil); err != nil {
		t.Fatal(err)
	}
	a = ironclaw(t, nil, "--root", root, "--data-dir", data, "audit", "--json")
	if a.code != 0 || !strings.Contains(a.stdout, "before-upgrade") {
		t.Errorf("audit after the move: %d %s%s", a.code, a.stdout, a.stderr)
	}
}
