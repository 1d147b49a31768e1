package daemon

import (
	"context"
	"fmt"
	"io"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// fileOp checks p and returns the running sandbox id and its agent. The
// caller brackets the operation with begin/end.
func (m *Manager) fileOp(ctx context.Context, id, p string, notRoot bool) (*box, *agentapi.Client, error) {
	if err := ValidatePath(p); err != nil {
		return nil, nil, fmt.Errorf("%w: path: %v", sandbox.ErrInvalid, err)
	}
	if notRoot && p == "/" {
		return nil, nil, fmt.Errorf("%w: path: not allowed on /", sandbox.ErrInvalid)
	}
	b, _, err := m.running(id)
	if err != nil {
		return nil, nil, err
	}
	c, err := b.agent(ctx)
	if err != nil {
		return nil, nil, err
	}
	return b, c, nil
}

// limit is the smaller of the caller's limit (0: none) and the daemon's.
func (m *Manager) limit(l int64) int64 {
	if l <= 0 || l > m.cfg.MaxFileSize {
		return m.cfg.MaxFileSize
	}
	return l
}

// WriteFile stores r at path p in the sandbox id with mode (0: 0644). The
// file appears only once all of it arrived within limit bytes (0: the
// daemon's limit); it returns the bytes stored.
func (m *Manager) WriteFile(ctx context.Context, id, p string, r io.Reader, mode uint32, limit int64) (int64, error) {
	if mode > 0o7777 {
		return 0, fmt.Errorf("%w: mode: %o has bits beyond 07777", sandbox.ErrInvalid, mode)
	}
	b, c, err := m.fileOp(ctx, id, p, true)
	if err != nil {
		return 0, err
	}
	b.begin(false)
	defer b.end(false)
	return c.WriteFile(ctx, p, r, mode, m.limit(limit))
}

// ReadFile copies the file at p in the sandbox id to w, refusing files over
// limit bytes (0: the daemon's limit).
func (m *Manager) ReadFile(ctx context.Context, id, p string, w io.Writer, limit int64) (int64, error) {
	b, c, err := m.fileOp(ctx, id, p, false)
	if err != nil {
		return 0, err
	}
	b.begin(false)
	defer b.end(false)
	return c.ReadFile(ctx, p, w, m.limit(limit))
}

// Stat describes p in the sandbox id, not following a final symlink.
func (m *Manager) Stat(ctx context.Context, id, p string) (*agentapi.FileInfo, error) {
	b, c, err := m.fileOp(ctx, id, p, false)
	if err != nil {
		return nil, err
	}
	b.begin(false)
	defer b.end(false)
	return c.Stat(ctx, p)
}

// ListDir returns the entries of directory p in the sandbox id.
func (m *Manager) ListDir(ctx context.Context, id, p string) ([]agentapi.FileInfo, error) {
	b, c, err := m.fileOp(ctx, id, p, false)
	if err != nil {
		return nil, err
	}
	b.begin(false)
	defer b.end(false)
	l, err := c.List(ctx, p)
	if l == nil && err == nil {
		l = []agentapi.FileInfo{}
	}
	return l, err
}

// Mkdir creates directory p in the sandbox id (and its parents with parents).
func (m *Manager) Mkdir(ctx context.Context, id, p string, mode uint32, parents bool) error {
	if mode > 0o7777 {
		return fmt.Errorf("%w: mode: %o has bits beyond 07777", sandbox.ErrInvalid, mode)
	}
	b, c, err := m.fileOp(ctx, id, p, true)
	if err != nil {
		return err
	}
	b.begin(false)
	defer b.end(false)
	return c.Mkdir(ctx, p, mode, parents)
}

// Remove deletes p in the sandbox id; a non-empty directory only with recursive.
func (m *Manager) Remove(ctx context.Context, id, p string, recursive bool) error {
	b, c, err := m.fileOp(ctx, id, p, true)
	if err != nil {
		return err
	}
	b.begin(false)
	defer b.end(false)
	return c.Remove(ctx, p, recursive)
}
