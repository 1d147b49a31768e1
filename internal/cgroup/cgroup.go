// Package cgroup puts a sandbox in a control group with its limits, on
// cgroup v2 hosts and on v1 or hybrid hosts, where the memory, pids and cpu
// controllers live in v1 hierarchies.
//
// Creation goes through containerd/cgroups; every limit is then read back
// from the kernel's own files, and a limit whose controller is missing fails
// with sandbox.ErrUnsupported instead of being dropped.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	cgroups "github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
)

// Version is a cgroup hierarchy version.
type Version int

// The two cgroup versions.
const (
	V1 Version = 1
	V2 Version = 2
)

// Controllers IronClaw uses, in the order they are created.
var controllers = []string{"memory", "pids", "cpu"}

// cpuPeriod is the CFS period used for --cpus, in microseconds.
const cpuPeriod = 100000

// Host describes the cgroup layout of this machine.
type Host struct {
	// Version is the hierarchy the limits are applied in: V2 on unified
	// hosts, V1 on legacy and hybrid hosts.
	Version Version
	// Mode is what containerd/cgroups detected: "unified", "hybrid" or "legacy".
	Mode string
	// Mount is the cgroup mount: the v2 mount point, or the directory that
	// holds one v1 hierarchy per controller.
	Mount string
	// Available lists the controllers IronClaw can use here.
	Available map[string]bool
}

// Detect inspects the host's cgroup layout.
func Detect() (*Host, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return NewHost(V2, "/sys/fs/cgroup", "unified")
	case cgroups.Hybrid:
		return NewHost(V1, "/sys/fs/cgroup", "hybrid")
	case cgroups.Legacy:
		return NewHost(V1, "/sys/fs/cgroup", "legacy")
	default:
		return nil, fmt.Errorf("%w: no cgroup file system mounted at /sys/fs/cgroup", sandbox.ErrUnsupported)
	}
}

// NewHost describes a cgroup layout at mount explicitly. Tests use it to
// drive the v2 code on the hybrid host's unified mount.
func NewHost(v Version, mount, mode string) (*Host, error) {
	h := &Host{Version: v, Mode: mode, Mount: mount, Available: map[string]bool{}}
	switch v {
	case V2:
		b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
		if err != nil {
			return nil, fmt.Errorf("read cgroup v2 controllers: %w", err)
		}
		for _, c := range strings.Fields(string(b)) {
			h.Available[c] = true
		}
	case V1:
		for _, c := range controllers {
			if _, err := os.Stat(filepath.Join(mount, c, "cgroup.procs")); err == nil {
				h.Available[c] = true
			}
		}
	default:
		return nil, fmt.Errorf("cgroup version %d: unknown", v)
	}
	return h, nil
}

// Check returns an error wrapping sandbox.ErrUnsupported that names the
// first limit in r the host cannot enforce.
func (h *Host) Check(r sandbox.Resources) error {
	need := []struct {
		on   bool
		ctl  string
		flag string
	}{
		{r.MemoryBytes > 0, "memory", "--memory"},
		{r.Pids > 0, "pids", "--pids"},
		{r.CPUs > 0, "cpu", "--cpus"},
	}
	for _, n := range need {
		if n.on && !h.Available[n.ctl] {
			return fmt.Errorf("%w: %s needs the cgroup %s controller, which this host's cgroup v%d hierarchy does not offer; pass %s 0 to run without the limit",
				sandbox.ErrUnsupported, n.flag, n.ctl, h.Version, n.flag)
		}
	}
	return nil
}

// controllersFor returns the controllers the limits in r need, in
// creation order. A sandbox without limits gets no cgroup at all: its
// processes are still confined to its PID namespace, which dies with init.
func controllersFor(r sandbox.Resources) []string {
	var cs []string
	if r.MemoryBytes > 0 {
		cs = append(cs, "memory")
	}
	if r.Pids > 0 {
		cs = append(cs, "pids")
	}
	if r.CPUs > 0 {
		cs = append(cs, "cpu")
	}
	return cs
}

// Paths returns the directories a group at rel with the limits r has (or
// would have) on this host: one per controller on v1, one on v2, none
// without limits. Records keep them so that a later GC can remove them.
func (h *Host) Paths(rel string, r sandbox.Resources) []string {
	cs := controllersFor(r)
	if len(cs) == 0 {
		return nil
	}
	if h.Version == V2 {
		return []string{filepath.Join(h.Mount, rel)}
	}
	ps := make([]string, len(cs))
	for i, c := range cs {
		ps[i] = filepath.Join(h.Mount, c, rel)
	}
	return ps
}

// Group is a live control group that owns its directories.
type Group struct {
	host  *Host
	rel   string
	ctls  []string // controllers in use; none means no cgroup
	paths []string
	v1    cgroup1.Cgroup
	v2    *cgroup2.Manager
}

// Load returns a handle on the existing group rel made with the limits r,
// for a process that re-attaches to a sandbox it did not create.
func (h *Host) Load(rel string, r sandbox.Resources) *Group {
	return &Group{host: h, rel: rel, ctls: controllersFor(r), paths: h.Paths(rel, r)}
}

// LoadPaths returns a handle on the existing group rel whose directories
// (children first) a record kept.
func (h *Host) LoadPaths(rel string, r sandbox.Resources, paths []string) *Group {
	return &Group{host: h, rel: rel, ctls: controllersFor(r), paths: paths}
}

// makeDirsTimeout bounds how long makeDirs keeps making a group's parent
// again while something removes it as fast as it is made.
const makeDirsTimeout = 5 * time.Second

// makeDirs makes the group directories dirs and the parents on their way.
// A parent removed between its mkdir and its child's (`ironclaw gc`
// removes a root's empty parents; a start never finds its group's parent
// busy until the group exists) is made again: a start racing gc must not
// fail.
func makeDirs(dirs []string) error {
	deadline := time.Now().Add(makeDirsTimeout)
	for _, d := range dirs {
		for {
			err := os.Mkdir(d, 0o755)
			if err == nil || errors.Is(err, os.ErrExist) {
				break
			}
			if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// Create makes the group rel (such as "/ironclaw/<key>") with the limits
// r, reads every limit back from the kernel, and removes what it made on
// any failure. The parents on rel's way are made as needed; one removed
// while Create makes the group below it (`ironclaw gc` removes a root's
// empty parents) is made again.
func (h *Host) Create(rel string, r sandbox.Resources) (_ *Group, err error) {
	if err := h.Check(r); err != nil {
		return nil, err
	}
	g := &Group{host: h, rel: rel, ctls: controllersFor(r), paths: h.Paths(rel, r)}
	if len(g.ctls) == 0 {
		return g, nil
	}
	defer func() {
		if err != nil {
			_ = Remove(g.paths)
		}
	}()
	// The group's directories first, each in one mkdir: once they exist
	// their parents hold a group and cannot be removed under the rest.
	if err := makeDirs(g.paths); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", rel, err)
	}
	switch h.Version {
	case V1:
		g.v1, err = cgroup1.New(cgroup1.StaticPath(rel), v1Resources(r), cgroup1.WithHierarchy(g.v1Hierarchy))
	case V2:
		g.v2, err = cgroup2.NewManager(h.Mount, rel, v2Resources(r))
	}
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", rel, err)
	}
	if err := g.verify(r); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Group) v1Hierarchy() ([]cgroup1.Subsystem, error) {
	h := g.host
	var subs []cgroup1.Subsystem
	for _, c := range g.ctls {
		switch c {
		case "memory":
			subs = append(subs, cgroup1.NewMemory(h.Mount, cgroup1.OptionalSwap()))
		case "pids":
			subs = append(subs, cgroup1.NewPids(h.Mount))
		case "cpu":
			subs = append(subs, cgroup1.NewCpu(h.Mount))
		}
	}
	return subs, nil
}

func v1Resources(r sandbox.Resources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if r.MemoryBytes > 0 {
		limit := r.MemoryBytes
		swap := r.MemoryBytes // memsw = memory + swap: no swap on top of the limit
		out.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	if r.Pids > 0 {
		out.Pids = &specs.LinuxPids{Limit: &r.Pids}
	}
	if r.CPUs > 0 {
		quota, period := cpuQuota(r.CPUs), uint64(cpuPeriod)
		out.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	return out
}

func v2Resources(r sandbox.Resources) *cgroup2.Resources {
	out := &cgroup2.Resources{}
	if r.MemoryBytes > 0 {
		limit, swap := r.MemoryBytes, int64(0)
		out.Memory = &cgroup2.Memory{Max: &limit, Swap: &swap}
	}
	if r.Pids > 0 {
		out.Pids = &cgroup2.Pids{Max: r.Pids}
	}
	if r.CPUs > 0 {
		quota, period := cpuQuota(r.CPUs), uint64(cpuPeriod)
		out.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
	}
	return out
}

func cpuQuota(cpus float64) int64 { return int64(math.Round(cpus * cpuPeriod)) }

// verify reads each requested limit back from the kernel.
func (g *Group) verify(r sandbox.Resources) error {
	type want struct {
		ctl, file, value string
	}
	var ws []want
	page := int64(os.Getpagesize())
	mem := strconv.FormatInt(r.MemoryBytes/page*page, 10)
	switch g.host.Version {
	case V1:
		if r.MemoryBytes > 0 {
			ws = append(ws, want{"memory", "memory.limit_in_bytes", mem})
			// memsw (memory + swap) is set to the same value, so the
			// limit holds with swap too. Without swap accounting the
			// file is missing, and the limit holds only while the host
			// has no swap.
			switch _, err := os.Stat(g.file("memory", memswFile)); {
			case err == nil:
				ws = append(ws, want{"memory", memswFile, mem})
			case errors.Is(err, os.ErrNotExist):
				if err := noSwap(procSwaps); err != nil {
					return fmt.Errorf("verify cgroup limit: memory: %w", err)
				}
			default:
				return fmt.Errorf("verify cgroup limit: %w", err)
			}
		}
		if r.Pids > 0 {
			ws = append(ws, want{"pids", "pids.max", strconv.FormatInt(r.Pids, 10)})
		}
		if r.CPUs > 0 {
			ws = append(ws, want{"cpu", "cpu.cfs_quota_us", strconv.FormatInt(cpuQuota(r.CPUs), 10)},
				want{"cpu", "cpu.cfs_period_us", strconv.Itoa(cpuPeriod)})
		}
	case V2:
		if r.MemoryBytes > 0 {
			ws = append(ws, want{"", "memory.max", mem}, want{"", "memory.swap.max", "0"})
		}
		if r.Pids > 0 {
			ws = append(ws, want{"", "pids.max", strconv.FormatInt(r.Pids, 10)})
		}
		if r.CPUs > 0 {
			ws = append(ws, want{"", "cpu.max", fmt.Sprintf("%d %d", cpuQuota(r.CPUs), cpuPeriod)})
		}
	}
	for _, w := range ws {
		p := g.file(w.ctl, w.file)
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("verify cgroup limit: %w", err)
		}
		if got := strings.TrimSpace(string(b)); got != w.value {
			return fmt.Errorf("verify cgroup limit %s: kernel has %q, want %q", p, got, w.value)
		}
	}
	return nil
}

const (
	memswFile = "memory.memsw.limit_in_bytes"
	procSwaps = "/proc/swaps"
)

// noSwap returns an error unless the swaps file path (/proc/swaps) lists
// no swap area: on cgroup v1 without swap accounting a memory limit does
// not bound what a sandbox swaps out.
func noSwap(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 1 {
		return fmt.Errorf("the limit cannot be enforced: the host has swap (%s) and the v1 memory controller has no swap accounting "+
			"(%s is missing; boot with swapaccount=1, turn swap off, or run with --memory 0)", strings.Fields(lines[1])[0], memswFile)
	}
	return nil
}

func (g *Group) file(ctl, name string) string {
	if g.host.Version == V2 {
		return filepath.Join(g.host.Mount, g.rel, name)
	}
	return filepath.Join(g.host.Mount, ctl, g.rel, name)
}

// Paths returns the group's directories, children before their parents.
func (g *Group) Paths() []string { return g.paths }

// WorkloadHeadroom is how many processes and threads beyond its --pids
// limit a long-lived sandbox's group allows, for its init (the agent),
// when the workloads have a group of their own (SplitPids).
const WorkloadHeadroom = 64

// PidsChildPath returns the directory SplitPids makes for the group rel
// with the limits r on this host, or "" where it makes none (no pids
// limit, or no pids controller). Records keep it ahead of the group's own
// paths.
func (h *Host) PidsChildPath(rel string, r sandbox.Resources, name string) string {
	if r.Pids <= 0 || !h.Available["pids"] {
		return ""
	}
	if h.Version == V2 {
		return filepath.Join(h.Mount, rel, name)
	}
	return filepath.Join(h.Mount, "pids", rel, name)
}

// SplitPids gives the workloads of a long-lived sandbox a pids group of
// their own below the sandbox's group, with the sandbox's --pids limit,
// and raises the sandbox's own limit by WorkloadHeadroom: a fork bomb then
// fills the workloads' group and leaves the agent room for its threads.
// It returns the file through which single threads join the child, open
// for writing: the agent moves its launcher threads there once, and every
// command they fork starts in it. Without a pids limit it returns nil.
//
// Cgroup v1 moves single threads through the child's tasks file. Cgroup v2
// moves threads only inside a threaded subtree: the child is made
// "threaded" (the sandbox's group becomes its threaded root and keeps the
// domain limits, memory and cpu), pids is enabled for it, and threads join
// through its cgroup.threads.
func (g *Group) SplitPids(name string, r sandbox.Resources) (*os.File, error) {
	child := g.host.PidsChildPath(g.rel, r, name)
	if child == "" || !g.has("pids") {
		return nil, nil
	}
	if err := os.Mkdir(child, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create workload cgroup: %w", err)
	}
	g.paths = append([]string{child}, g.paths...)
	parent := filepath.Dir(child)
	joinFile := "tasks"
	if g.host.Version == V2 {
		if err := makeThreaded(parent, child, "pids"); err != nil {
			return nil, err
		}
		joinFile = "cgroup.threads"
	}
	writes := []struct{ file, value string }{
		{filepath.Join(parent, "pids.max"), strconv.FormatInt(r.Pids+WorkloadHeadroom, 10)},
		{filepath.Join(child, "pids.max"), strconv.FormatInt(r.Pids, 10)},
	}
	for _, w := range writes {
		if err := writeVerified(w.file, w.value); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(filepath.Join(child, joinFile), os.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open workload cgroup: %w", err)
	}
	return f, nil
}

// makeThreaded turns the v2 group child into a threaded cgroup below
// parent (which becomes a threaded root, or already is one) and enables
// the threaded controllers ctls for it, reading each step back.
func makeThreaded(parent, child string, ctls ...string) error {
	if err := writeVerified(filepath.Join(child, "cgroup.type"), "threaded"); err != nil {
		return err
	}
	if typ, err := os.ReadFile(filepath.Join(parent, "cgroup.type")); err != nil ||
		(strings.TrimSpace(string(typ)) != "domain threaded" && strings.TrimSpace(string(typ)) != "threaded") {
		return fmt.Errorf("verify %s: type %q, want a threaded root (%v)", parent, strings.TrimSpace(string(typ)), err)
	}
	for _, c := range ctls {
		ctl := filepath.Join(parent, "cgroup.subtree_control")
		if err := os.WriteFile(ctl, []byte("+"+c), 0); err != nil {
			return fmt.Errorf("enable %s for %s: %w", c, child, err)
		}
		b, err := os.ReadFile(ctl)
		if err != nil || !slices.Contains(strings.Fields(string(b)), c) {
			return fmt.Errorf("verify %s: %q lacks %s (%v)", ctl, strings.TrimSpace(string(b)), c, err)
		}
	}
	return nil
}

// writeVerified writes value to the cgroup file path and reads it back.
func writeVerified(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return fmt.Errorf("set %s: %w", path, err)
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != value {
		return fmt.Errorf("verify %s: kernel has %q, want %q (%v)", path, strings.TrimSpace(string(b)), value, err)
	}
	return nil
}

func (g *Group) has(ctl string) bool {
	for _, c := range g.ctls {
		if c == ctl {
			return true
		}
	}
	return false
}

// Version is the hierarchy version the group lives in.
func (g *Group) Version() Version { return g.host.Version }

// Open returns the group's directory for clone3(CLONE_INTO_CGROUP) on
// cgroup v2, which starts a process inside the group without a migration.
// On v1 it returns nil: processes are moved with AddProc.
func (g *Group) Open() (*os.File, error) {
	if g.host.Version != V2 || len(g.ctls) == 0 {
		return nil, nil
	}
	f, err := os.OpenFile(filepath.Join(g.host.Mount, g.rel), os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", g.rel, err)
	}
	return f, nil
}

// AddProc moves pid into the group.
func (g *Group) AddProc(pid int) error {
	var err error
	switch {
	case len(g.ctls) == 0:
		return nil
	case g.v1 != nil:
		err = g.v1.AddProc(uint64(pid))
	default:
		err = g.v2.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.rel, err)
	}
	return nil
}

// OOMKills returns how many processes the kernel OOM killer has killed in
// the group because of its memory limit.
func (g *Group) OOMKills() (uint64, error) {
	if !g.has("memory") {
		return 0, nil
	}
	if g.host.Version == V2 {
		return readKey(g.file("", "memory.events"), "oom_kill")
	}
	return readKey(g.file("memory", "memory.oom_control"), "oom_kill")
}

// Usage is a snapshot of what a group has consumed.
type Usage struct {
	MemoryBytes uint64 `json:"memory_bytes"`
	Pids        uint64 `json:"pids"`
}

// Usage reads the group's current memory and process counts.
func (g *Group) Usage() (Usage, error) {
	var u Usage
	var err error
	if g.has("memory") {
		name := "memory.usage_in_bytes"
		if g.host.Version == V2 {
			name = "memory.current"
		}
		if u.MemoryBytes, err = readUint(g.file("memory", name)); err != nil {
			return u, err
		}
	}
	if g.has("pids") {
		if u.Pids, err = readUint(g.file("pids", "pids.current")); err != nil {
			return u, err
		}
	}
	return u, nil
}

// SandboxRel is the group, relative to each hierarchy's root, of the
// sandbox with key key in the state root named rootName (state.Root.Name).
func SandboxRel(rootName, key string) string { return "/" + rootName + "/" + key }

// SandboxRelOf is SandboxRel of the sandbox whose state directory is dir
// (state.Root.SandboxDir): the only group its record may name.
func SandboxRelOf(dir string) string {
	return SandboxRel(state.NameOf(filepath.Dir(filepath.Dir(dir))), filepath.Base(dir))
}

// CheckRecorded returns an error unless each of paths, as read from a
// sandbox's record, is a group of that sandbox: a clean absolute directory
// named rel (see SandboxRel) below a hierarchy's root, or a child of it, on
// a cgroup file system. Removing a group kills every process in it, so a
// record that names any other directory must not be acted on. A path that
// no longer exists passes: there is nothing left to remove.
func CheckRecorded(paths []string, rel string) error {
	for _, p := range paths {
		i := strings.Index(p, rel)
		rest := ""
		if i >= 0 {
			rest = p[i+len(rel):]
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || i <= 0 ||
			(rest != "" && (rest[0] != '/' || strings.Contains(rest[1:], "/"))) {
			return fmt.Errorf("recorded cgroup %q is not a group of the sandbox (%s)", p, rel)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("check recorded cgroup %q: %w", p, err)
		}
		if st.Type != unix.CGROUP_SUPER_MAGIC && st.Type != unix.CGROUP2_SUPER_MAGIC {
			return fmt.Errorf("recorded cgroup %q is not on a cgroup file system", p)
		}
		if err := hierarchyRoot(p[:i]); err != nil {
			return fmt.Errorf("recorded cgroup %q is not a group of the sandbox (%s): %w", p, rel, err)
		}
	}
	return nil
}

// hierarchyRoot returns an error unless dir is where a cgroup hierarchy is
// mounted: on a cgroup file system, on another device than its parent. A
// group named like a sandbox's below some other group is not the
// sandbox's.
func hierarchyRoot(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("check hierarchy %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP_SUPER_MAGIC && st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not on a cgroup file system", dir)
	}
	var in, parent unix.Stat_t
	if err := unix.Stat(dir, &in); err != nil {
		return fmt.Errorf("check hierarchy %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return fmt.Errorf("check hierarchy %s: %w", dir, err)
	}
	if in.Dev == parent.Dev {
		return fmt.Errorf("%s is a group, not the root of a cgroup hierarchy", dir)
	}
	return nil
}

// Destroy kills whatever still runs in the group and removes it.
func (g *Group) Destroy() error { return Remove(g.Paths()) }

// Remove kills every process in the cgroup directories paths and removes
// them. Paths that do not exist are skipped, so Remove is idempotent and
// serves GC of half-made groups.
func Remove(paths []string) error {
	var errs []error
	for _, p := range paths {
		if err := removeOne(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeOne(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := syscall.Rmdir(dir)
		switch {
		case err == nil || errors.Is(err, syscall.ENOENT):
			return nil
		case !errors.Is(err, syscall.EBUSY):
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		case time.Now().After(deadline):
			return fmt.Errorf("remove cgroup %s: processes still running after 5s: %w", dir, err)
		}
		// Busy: kill what is left. Processes of a dead sandbox are
		// already dying with its PID namespace; this covers the rest.
		if err := killAll(dir); err != nil {
			return err
		}
		time.Sleep(delay)
	}
}

// killAll sends SIGKILL to every process in the group dir: through
// cgroup.kill where the kernel has it, else to each process listed. A
// threaded cgroup v2 group (the workloads' pids group of a long-lived
// sandbox) supports neither cgroup.kill nor cgroup.procs; its
// cgroup.threads lists thread IDs, and kill(2) of a thread ID kills the
// thread's whole process.
func killAll(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err == nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, syscall.EOPNOTSUPP) {
		b, err = os.ReadFile(filepath.Join(dir, "cgroup.threads"))
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list cgroup %s: %w", dir, err)
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL) // ESRCH: already gone
		}
	}
	return nil
}

// Procs lists the processes in the cgroup directory dir.
func Procs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "cgroup.procs"), err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return math.MaxUint64, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// readKey reads the value of key in a flat "key value" file.
func readKey(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return 0, fmt.Errorf("read %s: no %s line", path, key)
}

// PrimeMigration starts, in the background, the wait that the kernel makes
// every cgroup v1 migration pay, so that a migration made soon after (such
// as AddProc of a sandbox's init a few milliseconds later) finds it already
// under way or over instead of waiting a whole period from scratch.
//
// On v1, writing to a tasks or cgroup.procs file takes the global
// cgroup_threadgroup_rwsem for writing, and a writer that finds it idle
// first waits for an RCU grace period (5–10 ms here; see
// docs/performance.md). Writers that come while one is waiting share its
// grace period, and writers within about one period after the last one
// wait for none. PrimeMigration is such a writer: it moves the calling
// goroutine's own thread into the cgroup it already is in (a no-op move)
// on one hierarchy r uses. It returns at once; done is closed when the
// write returns, with its error (tests read it; callers may ignore it, as
// nothing depends on the move). On v2 (clone3 with CLONE_INTO_CGROUP needs
// no migration), or when r sets no limit, it does nothing.
func (h *Host) PrimeMigration(r sandbox.Resources) (done <-chan error) {
	c := make(chan error, 1)
	ctls := controllersFor(r)
	if h.Version != V1 || len(ctls) == 0 {
		close(c)
		return c
	}
	go func() {
		// The thread must not change under the write: the tasks file
		// takes a thread ID.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c <- primeOnce(h.Mount, ctls[0])
		close(c)
	}()
	return c
}

// primeOnce writes the calling thread's ID into the tasks file of the
// cgroup the thread already is in on the v1 hierarchy ctl.
func primeOnce(mount, ctl string) error {
	rel, err := threadCgroup(ctl)
	if err != nil {
		return err
	}
	tid := strconv.Itoa(unix.Gettid())
	f := filepath.Join(mount, ctl, rel, "tasks")
	if err := os.WriteFile(f, []byte(tid), 0); err != nil {
		return fmt.Errorf("prime cgroup migration: write %s: %w", f, err)
	}
	return nil
}

// threadCgroup returns the calling thread's cgroup on the v1 hierarchy
// that carries controller ctl.
func threadCgroup(ctl string) (string, error) {
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// hierarchy-ID:controller-list:path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == ctl {
				return f[2], nil
			}
		}
	}
	return "", fmt.Errorf("own cgroup: no v1 hierarchy with the %s controller in /proc/thread-self/cgroup", ctl)
}

// IsParentName reports whether name is one that state.NameOf gives a state
// root's parent groups: "ironclaw", or "ironclaw-" and 8 lowercase hex
// digits. RemoveParents touches no other name.
func IsParentName(name string) bool {
	if name == "ironclaw" {
		return true
	}
	hex, ok := strings.CutPrefix(name, "ironclaw-")
	if !ok || len(hex) != 8 {
		return false
	}
	for _, c := range hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ParentDirs returns where the parent groups named name live on this host:
// at the top of each v1 hierarchy IronClaw uses, or of the v2 hierarchy.
func (h *Host) ParentDirs(name string) []string {
	if h.Version == V2 {
		return []string{filepath.Join(h.Mount, name)}
	}
	dirs := make([]string, len(controllers))
	for i, c := range controllers {
		dirs[i] = filepath.Join(h.Mount, c, name)
	}
	return dirs
}

// RemoveParents removes the empty parent groups named name (state.Root.Name)
// that the sandboxes of one state root are made under, on every hierarchy
// of this host, and returns the directories it removed. A parent that does
// not exist is skipped. One that still holds a group or a process is kept
// (the kernel refuses to remove it, so a sandbox starting meanwhile keeps
// its own) and returned in inUse. A name that is not a parent name
// (IsParentName) is refused: nothing else is IronClaw's to remove. A start
// that finds its parent gone makes it again (Create).
func (h *Host) RemoveParents(name string) (removed, inUse []string, err error) {
	if !IsParentName(name) {
		return nil, nil, fmt.Errorf("remove cgroup parent %q: not an IronClaw parent name", name)
	}
	var errs []error
	for _, d := range h.ParentDirs(name) {
		switch err := syscall.Rmdir(d); {
		case err == nil:
			removed = append(removed, d)
		case errors.Is(err, syscall.ENOENT):
		case errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.ENOTEMPTY):
			inUse = append(inUse, d)
		default:
			errs = append(errs, fmt.Errorf("remove cgroup parent %s: %w", d, err))
		}
	}
	return removed, inUse, errors.Join(errs...)
}
