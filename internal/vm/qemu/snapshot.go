package qemu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// Snapshots use QEMU's migration stream written to a file: QMP getfd hands
// QEMU the file over the QMP socket (SCM_RIGHTS), migrate "fd:NAME" writes
// devices and memory to it, and a fresh QEMU started with -incoming defer
// loads it with migrate-incoming. No child process or path is involved, so
// it works under -sandbox on (spawn=deny) and the outer filter. QEMU 7.2
// has no "file:" migration URI; this is the portable equivalent.

const snapFD = "ironclaw-snapshot"

// Snapshot stops the VM and writes its whole state (devices and memory) to
// path. The agent connection is closed first: the guest agent then waits
// for a new host, which is the state every clone starts in. The VM stays
// stopped (QEMU's postmigrate state); Close it afterwards.
func (v *VM) Snapshot(ctx context.Context, path string) error {
	if v.Agent != nil {
		if err := v.Agent.Close(); err != nil {
			return fmt.Errorf("snapshot: close agent: %w", err)
		}
		v.Agent = nil
		if err := v.drainChannel(ctx); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	if err := v.QMP.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	if err := v.QMP.SendFD(ctx, snapFD, f); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := v.QMP.Execute(ctx, "migrate", map[string]string{"uri": "fd:" + snapFD}, nil); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := v.waitMigration(ctx); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// drainChannel empties the agent channel of what the guest wrote around
// the moment the host hung up: QEMU keeps what it could not deliver and
// hands it to the next host, where the end of an old session would garble
// the new one's handshake (and a snapshot would carry it to every clone).
// It connects without sending anything, so the guest agent, which waits
// for a host's first bytes, does not start a session, reads until the
// channel has been quiet for a while, and hangs up.
func (v *VM) drainChannel(ctx context.Context) error {
	const quiet = 300 * time.Millisecond
	time.Sleep(hangupGrace)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := agentapi.DialUnix(dctx, filepath.Join(v.cfg.Dir, agentSocket))
	if err != nil {
		return fmt.Errorf("drain agent channel: %w", err)
	}
	defer c.Close()
	return drain(c, quiet)
}

// drain reads and discards from c until nothing has come for quiet.
func drain(c net.Conn, quiet time.Duration) error {
	buf := make([]byte, 4096)
	deadline := time.Now().Add(5 * time.Second)
	defer c.SetReadDeadline(time.Time{})
	for time.Now().Before(deadline) {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		if n > 0 {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil // quiet
		}
		if err != nil {
			return fmt.Errorf("drain agent channel: %w", err)
		}
	}
	return errors.New("drain agent channel: the guest keeps writing")
}

// hangupGrace is how long a guest is given to notice that its host hung
// up: virtio-serial has no per-connection state, so a host that comes back
// sooner may have its first bytes read by the old session.
const hangupGrace = 300 * time.Millisecond

// Reconnect replaces the agent connection with a new one authenticated
// with token (a host that lost its connection, or a rekeyed clone). It
// hangs up, gives the guest hangupGrace to end the old session, discards
// what the guest wrote as that session ended, and authenticates; an
// attempt whose handshake got lost that way is retried (a refused token is
// not).
func (v *VM) Reconnect(ctx context.Context, token []byte) error {
	if v.Agent != nil {
		_ = v.Agent.Close()
		v.Agent = nil
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		time.Sleep(hangupGrace)
		if err = v.reconnect(ctx, token); err == nil || errors.Is(err, agentapi.ErrAuth) || ctx.Err() != nil {
			break
		}
		v.log.Debug("agent reconnect failed; retrying", "err", err)
	}
	if err != nil {
		return fmt.Errorf("qemu reconnect: %w", err)
	}
	return nil
}

func (v *VM) reconnect(ctx context.Context, token []byte) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := agentapi.DialUnix(cctx, filepath.Join(v.cfg.Dir, agentSocket))
	if err != nil {
		return err
	}
	if err := drain(conn, 100*time.Millisecond); err != nil {
		conn.Close()
		return err
	}
	a, err := agentapi.Connect(cctx, conn, token)
	if err != nil {
		return err
	}
	v.Agent = a
	return nil
}

// waitMigration polls query-migrate until the migration completed or
// failed.
func (v *VM) waitMigration(ctx context.Context) error {
	for {
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		if err := v.QMP.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return fmt.Errorf("QEMU exited during the migration: %v", v.waitErr)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Restore starts a fresh QEMU for cfg (the machine the snapshot was taken
// of: same image, memory, CPUs and devices) waiting for a migration, loads
// the snapshot at path and lets the guest run, then makes the clone its
// own: it connects with the template's token and rekeys the agent with
// cfg.Token and fresh entropy, so no two clones share a token or a random
// state. BootTime is from process start to the rekeyed agent. Any failure
// destroys the clone.
func Restore(ctx context.Context, cfg Config, templateToken []byte, path string) (_ *VM, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("qemu restore: %w", err)
	}
	defer f.Close()
	cfg.Incoming = true
	v, err := launch(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.teardown()
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, v.cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.exited:
			cancel()
		case <-bctx.Done():
		}
	}()
	if err := v.dialQMP(bctx); err != nil {
		return nil, err
	}
	if err := v.QMP.SendFD(bctx, snapFD, f); err != nil {
		return nil, v.bootErr("restore", err)
	}
	if err := v.QMP.Execute(bctx, "migrate-incoming", map[string]string{"uri": "fd:" + snapFD}, nil); err != nil {
		return nil, v.bootErr("restore", err)
	}
	if err := v.resume(bctx); err != nil {
		return nil, v.bootErr("restore", err)
	}
	if err := v.connect(ctx, templateToken); err != nil {
		return nil, err
	}
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("qemu restore: entropy: %w", err)
	}
	if err := v.Agent.Rekey(bctx, cfg.Token, seed); err != nil {
		return nil, v.bootErr("rekey the clone's agent", err)
	}
	v.BootTime = time.Since(v.started)
	return v, nil
}

// resume waits until the incoming migration has finished and starts the
// guest: the snapshot was taken of a stopped VM, which QEMU restores
// stopped.
func (v *VM) resume(ctx context.Context) error {
	if err := v.waitMigration(ctx); err != nil {
		return err
	}
	return v.QMP.Execute(ctx, "cont", nil, nil)
}

// SendFD hands f to QEMU under name (QMP getfd with the descriptor as
// SCM_RIGHTS ancillary data on the same message).
func (q *QMP) SendFD(ctx context.Context, name string, f *os.File) error {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return errors.New("qmp getfd: not a Unix socket")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	_ = q.conn.SetDeadline(dl)
	b, err := json.Marshal(qmpCommand{Execute: "getfd", Arguments: map[string]string{"fdname": name}})
	if err != nil {
		return fmt.Errorf("qmp getfd: %w", err)
	}
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("qmp getfd: %w", err)
	}
	for {
		var r qmpReply
		if err := q.read(&r); err != nil {
			return fmt.Errorf("qmp getfd: %w", err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return fmt.Errorf("qmp getfd: %s: %s", r.Error.Class, r.Error.Desc)
		}
		return nil
	}
}
