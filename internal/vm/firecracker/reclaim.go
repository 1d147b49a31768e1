package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/state"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// RecordFile is the driver's record in the sandbox directory: written
// before Firecracker (or the jailer) starts, completed with the VMM's PID
// once known, removed by Close; Reclaim works from it alone.
const RecordFile = "firecracker.json"

type record struct {
	ID string `json:"id"`
	// PID and StartTime (field 22 of /proc/PID/stat) name the VMM
	// without trusting a reused PID.
	PID       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"start_time,omitempty"`
	// Dir holds the driver's files: the sandbox directory, or the jail's
	// root (<Chroot>/root).
	Dir string `json:"dir"`
	// Chroot is the jailer's per-VM directory <base>/firecracker/<id>.
	Chroot string `json:"chroot,omitempty"`
}

func writeRecord(dir string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("firecracker record: %w", err)
	}
	tmp := filepath.Join(dir, RecordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("firecracker record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, RecordFile)); err != nil {
		return fmt.Errorf("firecracker record: %w", err)
	}
	return nil
}

// check refuses a record whose paths are not the ones the driver makes
// for dir, so a damaged record cannot aim Reclaim elsewhere.
func (r *record) check(dir string) error {
	if r.ID == "" || strings.ContainsAny(r.ID, "/ ") || r.ID == "." || r.ID == ".." {
		return fmt.Errorf("firecracker record in %s: bad id %q", dir, r.ID)
	}
	if r.Chroot == "" {
		if filepath.Clean(r.Dir) != filepath.Clean(dir) {
			return fmt.Errorf("firecracker record in %s: files dir %q is not the sandbox's", dir, r.Dir)
		}
		return nil
	}
	c := filepath.Clean(r.Chroot)
	if !filepath.IsAbs(c) || filepath.Base(c) != r.ID || filepath.Base(filepath.Dir(c)) != "firecracker" || filepath.Clean(r.Dir) != filepath.Join(c, "root") {
		return fmt.Errorf("firecracker record in %s: chroot %q / dir %q are not a jailer's for %q", dir, r.Chroot, r.Dir, r.ID)
	}
	return nil
}

// Reclaim kills the Firecracker named in dir's record if it still runs
// (same PID and start time) and removes the driver's files: sockets,
// drives, the initramfs, the jailer's chroot, then the record. It is
// idempotent; a directory without a record is left alone.
func Reclaim(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("firecracker reclaim: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("firecracker reclaim: record in %s: %w", dir, err)
	}
	if err := r.check(dir); err != nil {
		return fmt.Errorf("firecracker reclaim: %w", err)
	}
	if r.PID > 0 {
		if err := state.KillStarted(r.PID, r.StartTime, 5*time.Second); err != nil {
			return fmt.Errorf("firecracker reclaim: %w", err)
		}
	}
	var errs []error
	for _, f := range []string{APISocket, VsockSocket, initrdFile, rwFile} {
		if err := os.Remove(filepath.Join(r.Dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if r.Chroot != "" {
		if err := os.RemoveAll(filepath.Clean(r.Chroot)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("firecracker reclaim: %w", err)
	}
	for _, f := range []string{RecordFile, RecordFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("firecracker reclaim: %w", err)
		}
	}
	return nil
}
