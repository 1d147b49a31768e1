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

// SuiteLeaks is the leak check of an end-to-end test package whose tests
// share the state root dir, whose objects are grouped under name
// (state.Root.Name): links named linkPrefix… and namespace bind mounts left
// on this host, processes whose command line names a directory of the root
// (a QEMU names its sandbox's), and what Leaks finds. When nothing leaked
// it removes the suite's directory (BuildSuite's, the root's parent); on a
// leak it keeps it for a look. A package that made no root (dir "") has
// nothing to check.
func SuiteLeaks(dir, name, linkPrefix string) error {
	if dir == "" {
		return nil
	}
	var problems []string
	if links, err := LeakedLinks(linkPrefix); err != nil || len(links) > 0 {
		problems = append(problems, fmt.Sprintf("links %v (%v)", links, err))
	}
	if mounts, err := LeakedMounts(""); err != nil || len(mounts) > 0 {
		problems = append(problems, fmt.Sprintf("netns mounts %v (%v)", mounts, err))
	}
	if procs := processesMentioning(dir); len(procs) > 0 {
		problems = append(problems, fmt.Sprintf("processes %v", procs))
	}
	if err := Leaks(dir, name); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	// Nothing leaked: the suite's directory (binaries, state root) goes.
	return os.RemoveAll(filepath.Dir(dir))
}

// processesMentioning lists live processes whose command line names a
// path below dir.
func processesMentioning(dir string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && (bytes.Contains(b, []byte(dir+"/")) || bytes.Contains(b, []byte("\x00"+dir+"\x00"))) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return out
}
