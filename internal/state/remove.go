package state

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// removeTree removes the file or directory tree at path, like os.RemoveAll,
// with at most three descriptors open whatever the depth. A sandbox's
// workspace is in its state directory and the workload shapes it:
// os.RemoveAll holds a descriptor per level, so a deep enough chain of
// directories exhausts the process's descriptors (the daemon's, shared
// with everything else it does) and the removal fails for good.
//
// It walks down to a directory without subdirectories, empties it, and
// climbs back through "..", checking that each parent is still the
// directory it came from. Symlinks are removed, never followed. Another
// remover may work on the same tree at the same time (gc and a sandbox's
// own release): a directory it removes under this walk restarts the walk
// from the top, which ends at once when the other remover has finished.
func removeTree(path string) error {
	for range maxRemoveRestarts {
		if err := removeTreeOnce(path); err != errRemovedUnder {
			return err
		}
	}
	return fmt.Errorf("remove %s: directories kept being removed under the walk (%d restarts)", path, maxRemoveRestarts)
}

// maxRemoveRestarts bounds removeTree's restarts.
const maxRemoveRestarts = 100

// errRemovedUnder reports that the directory removeTreeOnce was reading
// has been removed by someone else.
var errRemovedUnder = errors.New("directory removed under the walk")

func removeTreeOnce(path string) error {
	path = filepath.Clean(path)
	pfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	defer unix.Close(pfd)
	name := filepath.Base(path)
	switch err := unix.Unlinkat(pfd, name, 0); err {
	case nil, unix.ENOENT:
		return nil
	case unix.EISDIR:
	default:
		return &os.PathError{Op: "unlinkat", Path: path, Err: err}
	}

	type level struct {
		name     string
		dev, ino uint64
	}
	var stack []level
	where := func() string {
		names := make([]string, len(stack))
		for i, l := range stack {
			names[i] = l.name
		}
		return filepath.Join(filepath.Dir(path), strings.Join(names, "/"))
	}
	openDir := func(dirfd int, n string) (*os.File, level, error) {
		fd, err := unix.Openat(dirfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, level{}, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, level{}, err
		}
		return os.NewFile(uintptr(fd), n), level{name: n, dev: st.Dev, ino: st.Ino}, nil
	}

	f, top, err := openDir(pfd, name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	stack = append(stack, top)
	defer func() { f.Close() }()
	for {
		names, rerr := f.Readdirnames(1024)
		if errors.Is(rerr, unix.ENOENT) {
			return errRemovedUnder
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return &os.PathError{Op: "readdirnames", Path: where(), Err: rerr}
		}
		var child *os.File
		for _, n := range names {
			err := unix.Unlinkat(int(f.Fd()), n, 0)
			if err == nil || err == unix.ENOENT {
				continue
			}
			if err != unix.EISDIR {
				return &os.PathError{Op: "unlinkat", Path: where() + "/" + n, Err: err}
			}
			c, lv, err := openDir(int(f.Fd()), n)
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "open", Path: where() + "/" + n, Err: err}
			}
			child = c
			stack = append(stack, lv)
			break
		}
		if child != nil {
			f.Close()
			f = child
			continue
		}
		if len(names) > 0 {
			continue // more entries may follow
		}
		// f is empty: remove it from its parent.
		done := stack[len(stack)-1]
		if len(stack) == 1 {
			if err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
				return &os.PathError{Op: "unlinkat", Path: path, Err: err}
			}
			return nil
		}
		up, lv, err := openDir(int(f.Fd()), "..")
		if errors.Is(err, unix.ENOENT) {
			return errRemovedUnder
		}
		if err != nil {
			return &os.PathError{Op: "open", Path: where() + "/..", Err: err}
		}
		parent := stack[len(stack)-2]
		if lv.dev != parent.dev || lv.ino != parent.ino {
			up.Close()
			return fmt.Errorf("remove %s: a directory on the way was moved during the removal", where())
		}
		f.Close()
		f = up
		stack = stack[:len(stack)-1]
		if err := unix.Unlinkat(int(f.Fd()), done.name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
			return &os.PathError{Op: "unlinkat", Path: where() + "/" + done.name, Err: err}
		}
	}
}
