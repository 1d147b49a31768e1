package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// cgroupMounts are where IronClaw's cgroup parents can live: one v1
// hierarchy per controller, and the v2 mount (pure v2 or hybrid).
var cgroupMounts = []string{
	"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu",
	"/sys/fs/cgroup", "/sys/fs/cgroup/unified",
}

// Leaks reports what sandboxes of the state root dir, whose kernel objects
// are grouped under name (state.Root.Name), left behind: sandbox
// directories, cgroups, init processes and mounts. It then removes the
// empty cgroup parents a test root creates. It returns nil when nothing
// leaked.
func Leaks(dir, name string) error {
	var found []string
	if ents, err := os.ReadDir(filepath.Join(dir, "sandboxes")); err == nil {
		for _, e := range ents {
			found = append(found, "state dir "+e.Name())
		}
	}
	for _, m := range cgroupMounts {
		parent := filepath.Join(m, name)
		ents, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				found = append(found, "cgroup "+filepath.Join(parent, e.Name()))
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
		if len(args) >= 2 && string(args[0]) == "ironclaw-init" && string(args[1]) == name {
			found = append(found, "init process "+filepath.Base(filepath.Dir(p)))
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if strings.Contains(line, " "+dir+"/") {
				found = append(found, "mount "+line)
			}
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("leaked after the tests:\n  %s", strings.Join(found, "\n  "))
	}
	var errs []error
	for _, m := range cgroupMounts {
		if err := os.Remove(filepath.Join(m, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
