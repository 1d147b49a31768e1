package initproc

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Mount flags of the pieces of a sandbox's root.
const (
	tmpfsFlags = unix.MS_NOSUID | unix.MS_NODEV
	procFlags  = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

// procReadOnly and procMasked harden /proc the way OCI runtimes do: the
// sandbox cannot write kernel tunables or read kernel memory and keys.
var (
	procReadOnly = []string{"bus", "fs", "irq", "sys", "sysrq-trigger"}
	procMasked   = []struct {
		name string
		dir  bool // what it usually is; maskProc copes with the other
	}{
		{"acpi", true}, {"asound", true}, {"kcore", false}, {"keys", false}, {"latency_stats", false},
		{"scsi", true}, {"sched_debug", false}, {"timer_list", false}, {"timer_stats", false},
	}
)

// devNodes are the host device nodes bound into the sandbox's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// devLinks are the symlinks of the sandbox's /dev.
var devLinks = []struct{ name, target string }{
	{"ptmx", "pts/ptmx"}, {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
	{"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
}

// buildRoot makes the sandbox's root file system in init's private mount
// namespace and pivots into it. It returns the failing step on error.
// Nothing here is visible on the host: the mounts die with the namespace.
func buildRoot(cfg *Config) (string, error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "make mounts private", err
	}
	nr := cfg.NewRoot
	if err := unix.Mount("tmpfs", nr, "tmpfs", tmpfsFlags, "mode=0755,size=8m"); err != nil {
		return "mount root", fmt.Errorf("tmpfs on %s: %w", nr, err)
	}
	t, err := newTree(nr)
	if err != nil {
		return "mount root", err
	}
	defer t.close()
	names := make([]string, 0, len(cfg.Symlinks))
	for name := range cfg.Symlinks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := t.mkdirParents(name); err != nil {
			return "mount " + name, err
		}
		if err := t.symlink(cfg.Symlinks[name], name); err != nil {
			return "mount " + name, err
		}
	}
	if err := t.mkdirAll("/etc"); err != nil {
		return "mount /etc", err
	}
	for name, content := range cfg.Etc {
		if err := t.writeFile(path.Join("/etc", name), content); err != nil {
			return "mount /etc", err
		}
	}
	for _, s := range cfg.Sources {
		if err := t.bindSource(s); err != nil {
			return "mount " + s.Target, err
		}
	}
	if err := mountProc(t); err != nil {
		return "mount /proc", err
	}
	if err := mountDev(t); err != nil {
		return "mount /dev", err
	}
	if err := t.mkdirMount("/tmp", "tmpfs", tmpfsFlags, "mode=1777"); err != nil {
		return "mount /tmp", err
	}
	// pivot_root(".", ".") stacks the old root on top of the new one; the
	// lazy unmount then detaches it, so no path leads back to the host.
	if err := unix.Chdir(nr); err != nil {
		return "pivot_root", err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return "pivot_root", err
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return "pivot_root", fmt.Errorf("detach old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return "pivot_root", err
	}
	// The root itself (and with it /etc) is read-only from now on; /tmp,
	// /workspace and rw mounts are separate mounts and stay writable.
	if err := setattr("/", unix.MOUNT_ATTR_RDONLY, false); err != nil {
		return "make root read-only", err
	}
	return "", nil
}

// tree builds the new root on its fresh tmpfs. It remembers what it made
// there, so that it neither stats a path it knows is free nor creates a
// parent it knows exists: the kernel's path walks (and Go's open, which
// costs an openat, two fcntls, an epoll_ctl and a close per file) were a
// large part of init's start. Below anything it did not make itself — a
// bind mount, a symlink — it asks the kernel, as before.
//
// Below anything it did not make, a path is resolved inside the new root
// (openat2 RESOLVE_IN_ROOT from root), as the sandbox will resolve it: a
// bind mount's content is the host's, and a symlink a workload left in a
// persistent workspace ("planted -> /var/tmp") must lead a mount target
// to the sandbox's /var/tmp, never to the host's, where init would create
// mount points outside the sandbox.
type tree struct {
	nr   string
	root int // O_PATH descriptor of nr
	// canon is nr as the kernel names it (symlinks resolved).
	canon string
	// links are the symlinks made here.
	links map[string]bool
	// dirs are the directories made here (sandbox paths, "/" for the
	// tmpfs root) with nothing mounted on them: their every entry is in
	// made.
	dirs map[string]bool
	// made is every entry created in a directory of dirs.
	made map[string]bool
}

func newTree(nr string) (*tree, error) {
	fd, err := unix.Open(nr, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", nr, err)
	}
	canon, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("read the path of %s: %w", nr, err)
	}
	return &tree{nr: nr, root: fd, canon: canon, links: map[string]bool{}, dirs: map[string]bool{"/": true}, made: map[string]bool{"/": true}}, nil
}

// guestPath returns the sandbox path of fd, a descriptor from resolve.
func (t *tree) guestPath(fd int) (string, error) {
	l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if l == t.canon {
		return "/", nil
	}
	rel, ok := strings.CutPrefix(l, t.canon+"/")
	if !ok {
		return "", fmt.Errorf("%s is outside the new root %s", l, t.canon)
	}
	return "/" + rel, nil
}

func (t *tree) close() { unix.Close(t.root) }

// known reports whether p is an entry made here, other than a symlink,
// in a directory made here: its host path leads nowhere else.
func (t *tree) known(p string) bool {
	return t.dirs[path.Dir(p)] && t.made[p] && !t.links[p]
}

// resolve opens sandbox path p (O_PATH, plus flags) inside the new root:
// symlinks and ".." resolve as they will in the sandbox, and never lead
// out of it.
func (t *tree) resolve(p string, flags uint64) (int, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(t.root, rel, &unix.OpenHow{
		Flags:   flags | unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// create makes p (a directory or an empty file) in its parent, resolved
// inside the new root; the parent must exist. It reports EEXIST when
// something is there already (a dangling symlink among others).
func (t *tree) create(p string, dir bool) error {
	pfd, err := t.resolve(path.Dir(p), unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("open parent of %s: %w", p, err)
	}
	defer unix.Close(pfd)
	if dir {
		err = unix.Mkdirat(pfd, path.Base(p), 0o755)
	} else {
		err = unix.Mknodat(pfd, path.Base(p), unix.S_IFREG|0o644, 0)
	}
	return err
}

// mkdirInRoot creates directory p and its missing parents inside the new
// root, as os.MkdirAll does on the host.
func (t *tree) mkdirInRoot(p string) error {
	fd, err := t.resolve(p, unix.O_DIRECTORY)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if err != unix.ENOENT || p == "/" {
		return fmt.Errorf("mkdir %s: %w", p, err)
	}
	if err := t.mkdirInRoot(path.Dir(p)); err != nil {
		return err
	}
	if err := t.create(p, true); err != nil {
		return fmt.Errorf("mkdir %s: %w", p, err)
	}
	return nil
}

// host returns the path of sandbox path p during the build.
func (t *tree) host(p string) string { return filepath.Join(t.nr, p) }

// fresh reports whether p is free in a directory whose entries are all
// known.
func (t *tree) fresh(p string) bool {
	return t.dirs[path.Dir(p)] && !t.made[p]
}

// mkdirAll creates directory p and its parents, as os.MkdirAll does.
func (t *tree) mkdirAll(p string) error {
	p = path.Clean("/" + p)
	if t.dirs[p] {
		return nil
	}
	if !t.made[p] {
		if err := t.mkdirAll(path.Dir(p)); err != nil {
			return err
		}
		if t.fresh(p) {
			if err := unix.Mkdir(t.host(p), 0o755); err != nil {
				return fmt.Errorf("mkdir %s: %w", p, err)
			}
			t.dirs[p], t.made[p] = true, true
			return nil
		}
	}
	return t.mkdirInRoot(p)
}

// mkdirParents creates the parents of target. They are created in the
// sandbox's root tmpfs; a parent inside a read-only bind mount must
// already exist there.
func (t *tree) mkdirParents(target string) error {
	if err := t.mkdirAll(path.Dir(path.Clean("/" + target))); err != nil {
		return fmt.Errorf("create parent of %s: %w", target, err)
	}
	return nil
}

func (t *tree) symlink(target, p string) error {
	p = path.Clean("/" + p)
	if !t.dirs[path.Dir(p)] {
		return fmt.Errorf("symlink %s: its directory was not made by init", p)
	}
	if err := unix.Symlink(target, t.host(p)); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	t.made[p], t.links[p] = true, true
	return nil
}

// writeFile writes content to the new file p (mode 0644), truncating
// whatever is there, as os.WriteFile does.
func (t *tree) writeFile(p, content string) error {
	p = path.Clean("/" + p)
	fd, err := unix.Open(t.host(p), unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if t.dirs[path.Dir(p)] {
		t.made[p] = true
	}
	for b := []byte(content); len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("write %s: %w", p, err)
		}
		b = b[n:]
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// mountpoint creates an empty directory or file at p to mount on, unless
// something is already there.
func (t *tree) mountpoint(p string, dir bool) error {
	p = path.Clean("/" + p)
	if !t.fresh(p) {
		if t.known(p) {
			return nil
		}
		fd, err := t.resolve(p, 0)
		if err == nil {
			unix.Close(fd)
			return nil
		}
		if err != unix.ENOENT {
			return fmt.Errorf("create mount point %s: %w", p, err)
		}
		if err := t.create(p, dir); err != nil {
			return fmt.Errorf("create mount point %s: %w", p, err)
		}
		return nil
	}
	var err error
	if dir {
		err = unix.Mkdir(t.host(p), 0o755)
	} else {
		// mknod(S_IFREG) makes an empty file in one call, where an
		// open and a close take two (and Go's os.OpenFile six).
		err = unix.Mknod(t.host(p), unix.S_IFREG|0o644, 0)
	}
	if err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	if t.dirs[path.Dir(p)] {
		t.made[p] = true
	}
	return nil
}

// mounted records that something is mounted on p: what is below it is no
// longer known. An empty new tmpfs (empty true) is known to be empty.
func (t *tree) mounted(p string, empty bool) {
	p = path.Clean("/" + p)
	delete(t.dirs, p)
	below := p + "/"
	for q := range t.made {
		if strings.HasPrefix(q, below) {
			delete(t.made, q)
			delete(t.dirs, q)
		}
	}
	if empty {
		t.dirs[p] = true
	}
}

// bindSource attaches the detached mount s.FD at s.Target.
func (t *tree) bindSource(s BindSource) error {
	if err := t.mkdirParents(s.Target); err != nil {
		return err
	}
	if err := t.mountpoint(s.Target, s.Dir); err != nil {
		return err
	}
	if t.known(path.Clean("/" + s.Target)) {
		if err := unix.MoveMount(s.FD, "", unix.AT_FDCWD, t.host(s.Target), unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	} else {
		fd, err := t.resolve(s.Target, 0)
		if err != nil {
			return fmt.Errorf("attach: open %s: %w", s.Target, err)
		}
		if !s.System {
			// A user mount may not replace what init builds, even
			// when a symlink on the way leads there.
			g, err := t.guestPath(fd)
			if err == nil && g != s.Target {
				err = sandbox.CheckMountTarget(g)
			}
			if err != nil {
				unix.Close(fd)
				return fmt.Errorf("attach: %s leads to %s: %w", s.Target, g, err)
			}
		}
		err = unix.MoveMount(s.FD, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	}
	t.mounted(s.Target, false)
	unix.Close(s.FD)
	return nil
}

// mkdirMount mounts a new fstype instance on directory target.
func (t *tree) mkdirMount(target, fstype string, flags uintptr, data string) error {
	if err := t.mkdirAll(target); err != nil {
		return err
	}
	if err := unix.Mount(fstype, t.host(target), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	t.mounted(target, fstype == "tmpfs")
	return nil
}

// setattr adds mount attributes to the mount at path, and to every mount
// below it when recursive, so that a read-only bind of /usr is read-only
// all the way down.
func setattr(path string, set uint64, recursive bool) error {
	var flags uint
	if recursive {
		flags = unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, path, flags, &unix.MountAttr{Attr_set: set}); err != nil {
		return fmt.Errorf("set mount attributes %#x on %s: %w", set, path, err)
	}
	return nil
}

// mountProc mounts a procfs for the sandbox's PID namespace and hides the
// kernel's sensitive files in it. Which files exist depends on the
// kernel: a mount on a missing one fails with ENOENT and is skipped (that
// saves a stat of each), and a mask of the other kind than expected (a
// file where a directory was expected, or the reverse) fails with ENOTDIR
// and is retried with the other kind.
func mountProc(t *tree) error {
	if err := t.mkdirMount("/proc", "proc", procFlags, ""); err != nil {
		return err
	}
	for _, name := range procReadOnly {
		p := t.host(path.Join("/proc", name))
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return fmt.Errorf("bind /proc/%s: %w", name, err)
		}
		if err := setattr(p, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
			return err
		}
	}
	for _, m := range procMasked {
		if err := maskPath(t.host(path.Join("/proc", m.name)), m.dir); err != nil && err != unix.ENOENT {
			return fmt.Errorf("mask /proc/%s: %w", m.name, err)
		}
	}
	return nil
}

// maskPath hides p: an empty read-only tmpfs on a directory, /dev/null on
// anything else. dir is what p is expected to be; when it is the other
// kind, the mount fails with ENOTDIR and the other mask is used. A missing
// p gives ENOENT.
func maskPath(p string, dir bool) error {
	err := mask(p, dir)
	if err == unix.ENOTDIR {
		err = mask(p, !dir)
	}
	return err
}

func mask(p string, dir bool) error {
	if dir {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|procFlags, "size=0")
	}
	return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
}

// mountDev builds a minimal /dev: bound host nodes (a user namespace cannot
// mknod), a private devpts instance, /dev/shm and the usual symlinks.
// Every mount below /dev gets nosuid and noexec in one recursive
// mount_setattr at the end (the tmpfs, devpts and shm have them already).
func mountDev(t *tree) error {
	if err := t.mkdirMount("/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return err
	}
	for _, n := range devNodes {
		dst := path.Join("/dev", n)
		if err := t.mountpoint(dst, false); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+n, t.host(dst), "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
		t.mounted(dst, false)
	}
	if err := t.mkdirMount("/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return err
	}
	if err := t.mkdirMount("/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777"); err != nil {
		return err
	}
	for _, l := range devLinks {
		if err := t.symlink(l.target, path.Join("/dev", l.name)); err != nil {
			return fmt.Errorf("symlink /dev/%s: %w", l.name, err)
		}
	}
	dev := t.host("/dev")
	if err := setattr(dev, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
		return err
	}
	return setattr(dev, unix.MOUNT_ATTR_RDONLY, false)
}
