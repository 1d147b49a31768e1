package initproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
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
	procMasked   = []string{"acpi", "asound", "kcore", "keys", "latency_stats", "scsi", "sched_debug", "timer_list", "timer_stats"}
)

// devNodes are the host device nodes bound into the sandbox's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

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
	names := make([]string, 0, len(cfg.Symlinks))
	for name := range cfg.Symlinks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := mkdirParents(nr, name); err != nil {
			return "mount " + name, err
		}
		if err := os.Symlink(cfg.Symlinks[name], filepath.Join(nr, name)); err != nil {
			return "mount " + name, fmt.Errorf("symlink: %w", err)
		}
	}
	if err := os.Mkdir(filepath.Join(nr, "etc"), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "mount /etc", err
	}
	for name, content := range cfg.Etc {
		if err := os.WriteFile(filepath.Join(nr, "etc", name), []byte(content), 0o644); err != nil {
			return "mount /etc", fmt.Errorf("write %s: %w", name, err)
		}
	}
	for _, s := range cfg.Sources {
		if err := bindSourceMount(nr, s); err != nil {
			return "mount " + s.Target, err
		}
	}
	if err := mountProc(nr); err != nil {
		return "mount /proc", err
	}
	if err := mountDev(nr); err != nil {
		return "mount /dev", err
	}
	if err := mkdirMount(nr, "/tmp", "tmpfs", tmpfsFlags, "mode=1777"); err != nil {
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

// bindSourceMount attaches the detached mount s.FD at s.Target under nr.
func bindSourceMount(nr string, s BindSource) error {
	if err := mkdirParents(nr, s.Target); err != nil {
		return err
	}
	dst := filepath.Join(nr, s.Target)
	if err := mkMountpoint(dst, s.Dir); err != nil {
		return err
	}
	if err := unix.MoveMount(s.FD, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	unix.Close(s.FD)
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

// mkdirParents creates the parents of target under root nr. They are
// created in the sandbox's root tmpfs; a parent inside a read-only bind
// mount must already exist there.
func mkdirParents(nr, target string) error {
	parent := filepath.Dir(filepath.Join(nr, target))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("create parent of %s: %w", target, err)
	}
	return nil
}

// mkMountpoint creates an empty directory or file to mount on, unless
// something is already there.
func mkMountpoint(dst string, dir bool) error {
	if _, err := os.Lstat(dst); err == nil {
		return nil
	}
	if dir {
		if err := os.Mkdir(dst, 0o755); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	return f.Close()
}

func mkdirMount(nr, target, fstype string, flags uintptr, data string) error {
	dst := filepath.Join(nr, target)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(fstype, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// mountProc mounts a procfs for the sandbox's PID namespace and hides the
// kernel's sensitive files in it.
func mountProc(nr string) error {
	if err := mkdirMount(nr, "/proc", "proc", procFlags, ""); err != nil {
		return err
	}
	for _, name := range procReadOnly {
		p := filepath.Join(nr, "proc", name)
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind /proc/%s: %w", name, err)
		}
		if err := setattr(p, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
			return err
		}
	}
	for _, name := range procMasked {
		p := filepath.Join(nr, "proc", name)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st.IsDir() {
			err = unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|procFlags, "size=0")
		} else {
			err = unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("mask /proc/%s: %w", name, err)
		}
	}
	return nil
}

// mountDev builds a minimal /dev: bound host nodes (a user namespace cannot
// mknod), a private devpts instance, /dev/shm and the usual symlinks.
func mountDev(nr string) error {
	dev := filepath.Join(nr, "dev")
	if err := mkdirMount(nr, "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return err
	}
	for _, n := range devNodes {
		dst := filepath.Join(dev, n)
		if err := mkMountpoint(dst, false); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+n, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
		if err := setattr(dst, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC, false); err != nil {
			return err
		}
	}
	if err := mkdirMount(nr, "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return err
	}
	if err := mkdirMount(nr, "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777"); err != nil {
		return err
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("symlink /dev/%s: %w", name, err)
		}
	}
	return setattr(dev, unix.MOUNT_ATTR_RDONLY, false)
}
