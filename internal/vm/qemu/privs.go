package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// makeChroot makes dir, QEMU's root once it runs the guest: empty, owned by
// root and not writable, so that QEMU, by then running as an unprivileged
// uid, can neither see the host's files nor put any there.
func makeChroot(dir string) error {
	if err := os.Mkdir(dir, 0o555); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make QEMU's root: %w", err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		return fmt.Errorf("make QEMU's root: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("make QEMU's root: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("make QEMU's root: %s is not empty", dir)
	}
	return nil
}

// dropped returns an error unless QEMU (pid) runs as the unprivileged uid
// and gid seccomp.VMMUID(pid) with no other group and no capability, with
// root as its root directory: the state -runas and -chroot leave it in.
func dropped(pid int, root string) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("verify QEMU's privileges: %w", err)
	}
	id := strconv.Itoa(seccomp.VMMUID(pid))
	want := map[string]string{
		"Uid": strings.Repeat(id+" ", 4), "Gid": strings.Repeat(id+" ", 4), "Groups": id + " ",
		"CapInh": "0000000000000000 ", "CapPrm": "0000000000000000 ", "CapEff": "0000000000000000 ",
		"CapAmb": "0000000000000000 ",
	}
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		w, check := want[key]
		if !ok || !check {
			continue
		}
		if got := strings.Join(strings.Fields(val), " ") + " "; got != w {
			return fmt.Errorf("verify QEMU's privileges: pid %d has %s %q, want %q", pid, key, strings.TrimSpace(got), strings.TrimSpace(w))
		}
		delete(want, key)
	}
	if len(want) > 0 {
		return fmt.Errorf("verify QEMU's privileges: /proc/%d/status lacks %d of the fields checked", pid, len(want))
	}
	got, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil {
		return fmt.Errorf("verify QEMU's root: %w", err)
	}
	if filepath.Clean(got) != filepath.Clean(root) {
		return fmt.Errorf("verify QEMU's root: pid %d has root %s, want %s", pid, got, root)
	}
	return nil
}
