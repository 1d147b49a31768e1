package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"golang.org/x/sys/unix"
)

// hostReader returns how cards read a file's current content for server s:
// the file the server would write, read by the gateway itself from the host
// side of the server's granted mount, with the path resolved as if the
// mount were the root (openat2 RESOLVE_IN_ROOT), so no symlink or ".." can
// make the gateway read outside what the sandbox was granted. Asking the
// server to read the file would trust the very program being held.
//
// An unsandboxed server (backend none) sees the host's paths as they are.
// A remote server's files are out of reach: its cards show the arguments.
func hostReader(s *ServerConfig) approval.ReadFunc {
	if s.Transport != TransportStdio {
		return nil
	}
	if s.Sandbox.Backend == BackendNone {
		return func(ctx context.Context, p string) ([]byte, error) {
			if !path.IsAbs(p) {
				return nil, fmt.Errorf("path %q is relative to the server's working directory, which the gateway does not know", p)
			}
			return readCapped(p)
		}
	}
	mounts := append([]sandbox.Mount(nil), s.Sandbox.Mounts...)
	if s.Sandbox.Workdir != "" {
		mounts = append(mounts, sandbox.Mount{Source: s.Sandbox.Workdir, Target: sandbox.Workspace, Writable: true})
	}
	return func(ctx context.Context, p string) ([]byte, error) {
		if !path.IsAbs(p) {
			p = path.Join(sandbox.Workspace, p)
		}
		p = path.Clean(p)
		var best *sandbox.Mount
		for i := range mounts {
			m := &mounts[i]
			if p == m.Target || strings.HasPrefix(p, strings.TrimSuffix(m.Target, "/")+"/") {
				if best == nil || len(m.Target) > len(best.Target) {
					best = m
				}
			}
		}
		if best == nil {
			return nil, fmt.Errorf("%s is not inside a mount granted to the server (it would land on the sandbox's own scratch space)", p)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, best.Target), "/")
		data, err := readInRoot(best.Source, rel)
		if err != nil {
			return nil, err
		}
		if !best.Writable {
			return data, fmt.Errorf("%s is on a read-only mount: the write will fail", p)
		}
		return data, nil
	}
}

func readInRoot(root, rel string) ([]byte, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open granted directory %s: %w", root, err)
	}
	defer unix.Close(dir)
	if rel == "" {
		return nil, fmt.Errorf("%s is a directory", root)
	}
	fd, err := unix.Openat2(dir, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("read %s: %w", rel, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("read %s in the granted directory: %w", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	return readFile(f)
}

func readCapped(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readFile(f)
}

// readFile reads a regular file up to the card limit (+1 byte, so the card
// can tell it was over).
func readFile(f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", f.Name())
	}
	return io.ReadAll(io.LimitReader(f, 1<<20+1))
}
