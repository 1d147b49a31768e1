// Package netns owns IronClaw's network namespaces and the links and
// addresses that connect them to the host.
//
// A namespace is made by unshare(CLONE_NEWNET) on a locked OS thread and
// kept alive by a bind mount of /proc/thread-self/ns/net at a path (like
// `ip netns add`, which uses /run/netns), so it outlives the process that made
// it and can be found, entered and reclaimed later by path. Code that must
// run inside a namespace runs through NS.Do on a fresh locked OS thread that
// is thrown away afterwards, so no goroutine ever returns to the Go
// scheduler in the wrong namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// NS is an open network namespace.
type NS struct {
	f    *os.File
	path string
}

// Fd returns the namespace's file descriptor, valid until Close.
func (n *NS) Fd() int { return int(n.f.Fd()) }

// File returns the namespace's open file, for setns(2) by the caller.
func (n *NS) File() *os.File { return n.f }

// Path returns the bind-mount path the namespace was created or opened at.
func (n *NS) Path() string { return n.path }

// Close closes the file descriptor; the namespace lives on while it is
// mounted or used.
func (n *NS) Close() error { return n.f.Close() }

// Open opens the namespace at path (a bind mount or /proc/PID/ns/net) and
// checks that it is a network namespace.
func Open(path string) (*NS, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	// NS_GET_NSTYPE returns the CLONE_NEW* type of a namespace file.
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		if err == nil {
			err = errors.New("not a network namespace")
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	return &NS{f: f, path: path}, nil
}

// Current opens the network namespace of the calling thread.
func Current() (*NS, error) {
	return Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
}

// Create makes a new network namespace and bind-mounts it at dir/name,
// creating dir if needed. It fails with an error wrapping os.ErrExist if the
// path is already taken. On error nothing is left behind.
func Create(dir, name string) (*NS, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("create netns: bad name %q", name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create netns dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", path, err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		return nil
	}, func() error {
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", src, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create netns %s: %w", path, err)
	}
	ns, err := Open(path)
	if err != nil {
		_ = Remove(path)
		return nil, err
	}
	return ns, nil
}

// Remove unmounts and deletes the namespace bind mount at path. The kernel
// frees the namespace, and with it every link inside it (a veth pair
// included), once nothing else holds it. Remove is idempotent: a missing
// path is not an error.
func Remove(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// Mounted reports whether path is a live namespace bind mount.
func Mounted(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// Do runs fn on an OS thread that has entered n (see onThread). Sockets
// fn creates stay in n when used elsewhere.
func (n *NS) Do(fn func() error) error {
	return onThread(func() error {
		if err := unix.Setns(n.Fd(), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.path, err)
		}
		return nil
	}, fn)
}

// onThread runs enter (which moves the thread into another network
// namespace) and then fn on an OS thread locked to them, and afterwards
// returns the thread to the namespace it started in and to the runtime.
// A thread that cannot be returned stays locked: its goroutine ends and
// the runtime discards it. (Leaving that to the runtime alone is not
// enough: the process's main thread cannot end, and the runtime parks it
// for good instead — in the other namespace, which it then keeps alive.)
func onThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open this thread's netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := enter(); err != nil {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			errc <- err
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
