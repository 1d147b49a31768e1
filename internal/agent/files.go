package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// errInvalidPath marks a path that names no file (empty final name, "." or
// "..", NUL byte). Containment is not checked here: the kernel does it.
var errInvalidPath = errors.New("invalid path")

// maxListEntries bounds a directory listing.
const maxListEntries = 100000

// resolveFlags confine every lookup beneath the file root: ".." may not
// climb out of it, absolute and escaping symlinks fail with EXDEV, and
// /proc magic links fail with ELOOP.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// relPath turns a sandbox path ("/work/a", "work/a") into one relative to
// the file root. It only normalises; it does not judge containment.
func relPath(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%w: %q contains NUL", errInvalidPath, p)
	}
	r := strings.TrimLeft(p, "/")
	if r == "" {
		r = "."
	}
	return r, nil
}

// splitParent returns the parent directory and final name of a relative
// path, refusing final names that cannot be created or removed.
func splitParent(rel string) (dir, name string, err error) {
	rel = strings.TrimRight(rel, "/")
	i := strings.LastIndexByte(rel, '/')
	dir, name = ".", rel
	if i >= 0 {
		dir, name = rel[:i], rel[i+1:]
		if dir == "" {
			dir = "."
		}
	}
	if name == "" || name == "." || name == ".." {
		return "", "", fmt.Errorf("%w: %q has no final name", errInvalidPath, rel)
	}
	return dir, name, nil
}

// openBeneath opens rel beneath the root with openat2.
func (s *Server) openBeneath(rel string, flags uint64, mode uint64) (int, error) {
	for {
		fd, err := unix.Openat2(int(s.root.Fd()), rel, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode, Resolve: resolveFlags})
		if err == unix.EAGAIN || err == unix.EINTR {
			continue // RESOLVE_BENEATH retries on a concurrent rename
		}
		if err == unix.EXDEV {
			return -1, fmt.Errorf("resolve %q: %w (%w)", rel, agentapi.ErrEscape, err)
		}
		if err == unix.ELOOP {
			return -1, fmt.Errorf("resolve %q: too many symlinks, or a /proc magic link (%w)", rel, err)
		}
		if err != nil {
			return -1, &os.PathError{Op: "openat2", Path: rel, Err: err}
		}
		return fd, nil
	}
}

func (s *Server) openParent(rel string) (dirfd int, name string, err error) {
	dir, name, err := splitParent(rel)
	if err != nil {
		return -1, "", err
	}
	fd, err := s.openBeneath(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, name, err
}

func (s *Server) fileOp(op agentapi.Op, f agentapi.FileSpec) agentapi.Response {
	rel, err := relPath(f.Path)
	if err != nil {
		return errResponse(agentapi.CodeInvalid, fmt.Errorf("%s %q: %w", op, f.Path, err))
	}
	var resp agentapi.Response
	switch op {
	case agentapi.OpStat:
		resp.Info, err = s.stat(rel)
	case agentapi.OpList:
		resp.List, err = s.list(rel)
	case agentapi.OpMkdir:
		err = s.mkdir(rel, f.Mode, f.Parents)
	case agentapi.OpRemove:
		err = s.remove(rel, f.Recursive)
	}
	if err != nil {
		return errResponse(errCode(err), fmt.Errorf("%s %q: %w", op, f.Path, err))
	}
	return resp
}

func (s *Server) stat(rel string) (*agentapi.FileInfo, error) {
	fd, err := s.openBeneath(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	name := rel
	if i := strings.LastIndexByte(strings.TrimRight(rel, "/"), '/'); i >= 0 {
		name = strings.TrimRight(rel, "/")[i+1:]
	}
	fi := fileInfo(name, &st)
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		fi.Link, _ = readlinkFd(fd)
	}
	return &fi, nil
}

func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func (s *Server) list(rel string) ([]agentapi.FileInfo, error) {
	fd, err := s.openBeneath(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	dir := os.NewFile(uintptr(fd), rel)
	defer dir.Close()
	names, err := dir.Readdirnames(maxListEntries + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read directory: %w", err)
	}
	if len(names) > maxListEntries {
		return nil, fmt.Errorf("directory has more than %d entries: %w", maxListEntries, agentapi.ErrTooLarge)
	}
	out := make([]agentapi.FileInfo, 0, len(names))
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // removed while listing
		}
		fi := fileInfo(n, &st)
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			buf := make([]byte, 4096)
			if k, err := unix.Readlinkat(fd, n, buf); err == nil {
				fi.Link = string(buf[:k])
			}
		}
		out = append(out, fi)
	}
	return out, nil
}

func fileInfo(name string, st *unix.Stat_t) agentapi.FileInfo {
	mode := os.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= os.ModeDir
	case unix.S_IFLNK:
		mode |= os.ModeSymlink
	case unix.S_IFIFO:
		mode |= os.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= os.ModeSocket
	case unix.S_IFCHR:
		mode |= os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		mode |= os.ModeDevice
	}
	if st.Mode&unix.S_ISUID != 0 {
		mode |= os.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		mode |= os.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		mode |= os.ModeSticky
	}
	return agentapi.FileInfo{Name: name, Size: st.Size, Mode: mode, ModTime: time.Unix(st.Mtim.Unix())}
}

// mkdirExact makes directory name in dfd with exactly mode: as for
// uploads, the umask must not narrow it (a shared directory asks for
// 01777). The new directory is opened without following a symlink swapped
// in meanwhile.
func mkdirExact(dfd int, name string, mode uint32, owner *FileOwner) error {
	if err := unix.Mkdirat(dfd, name, mode); err != nil {
		return err
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if owner != nil {
		if err := unix.Fchown(fd, int(owner.UID), int(owner.GID)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	return unix.Fchmod(fd, mode)
}

func (s *Server) mkdir(rel string, mode uint32, parents bool) error {
	if mode == 0 {
		mode = 0o755
	}
	mode &= 0o7777
	if !parents {
		dfd, name, err := s.openParent(rel)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		return mkdirExact(dfd, name, mode, s.cfg.FileOwner)
	}
	comps := strings.Split(strings.Trim(rel, "/"), "/")
	for i := range comps {
		sub := strings.Join(comps[:i+1], "/")
		if comps[i] == "" || comps[i] == "." || comps[i] == ".." {
			continue
		}
		dfd, name, err := s.openParent(sub)
		if err != nil {
			return err
		}
		err = mkdirExact(dfd, name, mode, s.cfg.FileOwner)
		unix.Close(dfd)
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("mkdir %s: %w", sub, err)
		}
	}
	// The result must be a directory beneath the root.
	fd, err := s.openBeneath(rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func (s *Server) remove(rel string, recursive bool) error {
	dfd, name, err := s.openParent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	err = unix.Unlinkat(dfd, name, 0)
	if err != unix.EISDIR {
		return err
	}
	err = unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
	if err == unix.ENOTEMPTY && recursive {
		return removeAllAt(dfd, name, 0)
	}
	return err
}

// removeAllAt removes the tree at name in dirfd without following symlinks.
func removeAllAt(dirfd int, name string, depth int) error {
	if depth > 256 {
		return fmt.Errorf("remove %s: tree deeper than 256 levels", name)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	for {
		names, err := d.Readdirnames(1024)
		for _, n := range names {
			uerr := unix.Unlinkat(fd, n, 0)
			if uerr == unix.EISDIR {
				uerr = removeAllAt(fd, n, depth+1)
			}
			if uerr != nil && uerr != unix.ENOENT {
				return fmt.Errorf("remove %s/%s: %w", name, n, uerr)
			}
		}
		if errors.Is(err, io.EOF) || len(names) == 0 {
			break
		}
		if err != nil {
			return err
		}
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

func (s *Server) limit(l int64) int64 {
	if l <= 0 || l > s.cfg.MaxFileSize {
		return s.cfg.MaxFileSize
	}
	return l
}

// handleWrite stores an upload under a temporary name in the target's
// directory and renames it into place when complete.
func (s *Server) handleWrite(st *yamux.Stream, f agentapi.FileSpec) {
	n, err := s.write(st, f)
	if err != nil {
		s.reply(st, errResponse(errCode(err), fmt.Errorf("write %q: %w", f.Path, err)))
		return
	}
	s.reply(st, agentapi.Response{Written: n})
}

func (s *Server) write(st io.Reader, f agentapi.FileSpec) (int64, error) {
	rel, err := relPath(f.Path)
	if err != nil {
		return 0, err
	}
	mode := f.Mode & 0o7777
	if mode == 0 {
		mode = 0o644
	}
	limit := s.limit(f.Limit)
	dfd, name, err := s.openParent(rel)
	if err != nil {
		return 0, err
	}
	defer unix.Close(dfd)
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := ".ironclaw-upload-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return 0, fmt.Errorf("create temporary file: %w", err)
	}
	out := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		if !ok {
			_ = out.Close()
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	var n int64
	for {
		fr, err := agentapi.ReadFrame(st, agentapi.MaxFrame)
		if err != nil {
			return n, fmt.Errorf("read upload: %w", err)
		}
		if fr.Type == agentapi.FrameStdinEOF {
			break
		}
		if fr.Type != agentapi.FrameStdin {
			return n, fmt.Errorf("read upload: unexpected %s frame: %w", fr.Type, agentapi.ErrFrame)
		}
		if n+int64(len(fr.Payload)) > limit {
			return n, fmt.Errorf("%w (%d bytes)", agentapi.ErrTooLarge, limit)
		}
		if _, err := out.Write(fr.Payload); err != nil {
			return n, fmt.Errorf("write: %w", err)
		}
		n += int64(len(fr.Payload))
	}
	if o := s.cfg.FileOwner; o != nil {
		if err := out.Chown(int(o.UID), int(o.GID)); err != nil {
			return n, fmt.Errorf("chown: %w", err)
		}
	}
	// The umask must not narrow the requested mode.
	if err := out.Chmod(os.FileMode(mode)); err != nil {
		return n, fmt.Errorf("chmod: %w", err)
	}
	if err := out.Close(); err != nil {
		return n, fmt.Errorf("close: %w", err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		ok = true
		return n, fmt.Errorf("rename into place: %w", err)
	}
	ok = true
	return n, nil
}

func (s *Server) handleRead(st *yamux.Stream, f agentapi.FileSpec) {
	rel, err := relPath(f.Path)
	if err != nil {
		s.reply(st, errResponse(agentapi.CodeInvalid, fmt.Errorf("read %q: %w", f.Path, err)))
		return
	}
	fd, err := s.openBeneath(rel, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		s.reply(st, errResponse(errCode(err), fmt.Errorf("read %q: %w", f.Path, err)))
		return
	}
	in := os.NewFile(uintptr(fd), rel)
	defer in.Close()
	var sb unix.Stat_t
	if err := unix.Fstat(fd, &sb); err != nil {
		s.reply(st, errResponse(agentapi.CodeInternal, fmt.Errorf("read %q: fstat: %w", f.Path, err)))
		return
	}
	if sb.Mode&unix.S_IFMT != unix.S_IFREG {
		s.reply(st, errResponse(agentapi.CodeInvalid, fmt.Errorf("read %q: not a regular file", f.Path)))
		return
	}
	if limit := s.limit(f.Limit); sb.Size > limit {
		s.reply(st, errResponse(agentapi.CodeTooLarge, fmt.Errorf("read %q: %d bytes: %w (%d bytes)", f.Path, sb.Size, agentapi.ErrTooLarge, limit)))
		return
	}
	info := fileInfo(rel, &sb)
	s.reply(st, agentapi.Response{Info: &info})
	buf := make([]byte, agentapi.DataChunk)
	var n int64
	for n < sb.Size {
		k, err := in.Read(buf[:min(int64(len(buf)), sb.Size-n)])
		if k > 0 {
			if werr := agentapi.WriteFrame(st, agentapi.FrameStdout, buf[:k]); werr != nil {
				return
			}
			n += int64(k)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("file shrank to %d bytes while being read", n)
			}
			_ = agentapi.WriteFrame(st, agentapi.FrameError, mustJSON(errResponse(agentapi.CodeInternal, fmt.Errorf("read %q: %w", f.Path, err))))
			return
		}
	}
	_ = agentapi.WriteFrame(st, agentapi.FrameEOF, nil)
}

// mustJSON marshals values of this package's own types, which always marshal.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("agent: marshal " + fmt.Sprintf("%T", v) + ": " + err.Error())
	}
	return b
}
