package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
)

// Uplink forwarding. Replies to a sandbox's connections come back on the
// host's uplink (the interface of its default route) and must be forwarded
// to the sandbox's link; the kernel forwards an IPv4 packet only if
// forwarding is on for the interface it arrived on. Forwarding on for the
// uplink would also make the host route whatever arrives there to any
// other interface (docker0, a VPN, other NICs). So IronClaw never leaves
// the host a router for anything but its sandboxes:
//
//   - An uplink where forwarding was off is noted in the root's record
//     Root/net/forwarding.json (with its previous value) before IronClaw
//     turns forwarding on, and is put in the host table's set of guarded
//     uplinks (firewall.SetUplinks) first, so the host's forward chain
//     drops every packet from it that is not bound for a sandbox link.
//   - When the root's last sandbox network is gone (no address lease is
//     left, pool slots included), the previous value is put back and the
//     uplink leaves the set: on Close, Reclaim, Maintain and Drain.
//   - An uplink where forwarding was already on is the host's business:
//     IronClaw neither guards nor restores it.
//
// Every change and check holds the flock of Root/net/forwarding.lock.
// The record is per root: two roots on one host do not see each other's
// sandboxes.

const (
	fwdRecordFile = "forwarding.json"
	fwdLockFile   = "forwarding.lock"
)

// fwdRecord is the root's record of the uplinks IronClaw turned IPv4
// forwarding on for.
type fwdRecord struct {
	Version int `json:"version"`
	// Uplinks maps each uplink to its forwarding value before IronClaw
	// turned it on.
	Uplinks map[string]string `json:"uplinks"`
}

func readFwdRecord(dir string) (*fwdRecord, error) {
	r := &fwdRecord{Version: 1, Uplinks: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(dir, fwdRecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read forwarding record: %w", err)
	}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, fwdRecordFile), err)
	}
	if r.Version != 1 {
		return nil, fmt.Errorf("read %s: unknown version %d", filepath.Join(dir, fwdRecordFile), r.Version)
	}
	if r.Uplinks == nil {
		r.Uplinks = map[string]string{}
	}
	return r, nil
}

// writeFwdRecord replaces the record atomically, or removes it when it
// lists no uplink.
func writeFwdRecord(dir string, r *fwdRecord) error {
	path := filepath.Join(dir, fwdRecordFile)
	if len(r.Uplinks) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove forwarding record: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode forwarding record: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// enableForwarding turns IPv4 forwarding on for the host's uplinks, for
// the sandbox being set up: each one where it was off is recorded, then
// guarded, then switched on. It runs for every Setup, so an uplink that
// changed, or a guard someone removed, is put right.
func (n *Net) enableForwarding(host *netns.NS) error {
	hc, err := n.hostConn()
	if err != nil {
		return err
	}
	dir := filepath.Join(n.cfg.Root, "net")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("uplink forwarding: %w", err)
	}
	lock, err := lockFile(filepath.Join(dir, fwdLockFile), true)
	if err != nil {
		return fmt.Errorf("uplink forwarding: lock: %w", err)
	}
	defer lock.Close()
	uplinks, err := netns.Uplinks(host)
	if err != nil {
		return err
	}
	rec, err := readFwdRecord(dir)
	if err != nil {
		return err
	}
	var guarded []string
	based := false
	for _, name := range uplinks {
		cur, err := netns.Forwarding(host, name)
		if err != nil {
			return err
		}
		_, ours := rec.Uplinks[name]
		if cur == "1" && !ours {
			continue // the host routes on it already: not IronClaw's
		}
		if !ours {
			rec.Uplinks[name] = cur
			if err := writeFwdRecord(dir, rec); err != nil {
				return err
			}
			n.cfg.at("uplink-recorded")
		}
		if !based {
			if err := firewall.EnsureHostBase(hc, nil); err != nil {
				return err
			}
			if guarded, err = firewall.ReadUplinks(hc); err != nil {
				return err
			}
			based = true
		}
		if !slices.Contains(guarded, name) {
			if err := firewall.GuardUplink(hc, name); err != nil {
				return err
			}
			n.cfg.at("uplink-guarded")
		}
		if cur != "1" {
			if err := netns.SetForwarding(host, name, "1"); err != nil {
				return err
			}
		}
	}
	return nil
}

// restoreForwarding puts back the forwarding value of every uplink in the
// record of root, and unguards it, once root has no sandbox network left
// (no address lease). Without a record it does nothing.
func restoreForwarding(root string) error {
	dir := filepath.Join(root, "net")
	if _, err := os.Stat(filepath.Join(dir, fwdRecordFile)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockFile(filepath.Join(dir, fwdLockFile), true)
	if err != nil {
		return fmt.Errorf("restore uplink forwarding: lock: %w", err)
	}
	defer lock.Close()
	rec, err := readFwdRecord(dir)
	if err != nil || len(rec.Uplinks) == 0 {
		return err
	}
	leases, err := os.ReadDir(filepath.Join(dir, "leases"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("restore uplink forwarding: %w", err)
	}
	for _, l := range leases {
		if netns.IsLeaseName(l.Name()) {
			return nil // a sandbox network (or pool slot) remains
		}
	}
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	hc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("restore uplink forwarding: %w", err)
	}
	names := make([]string, 0, len(rec.Uplinks))
	for name := range rec.Uplinks {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		// Forwarding goes off before the guard goes; an uplink that no
		// longer exists took its setting with it.
		if err := netns.SetForwarding(host, name, rec.Uplinks[name]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("restore uplink forwarding: %w", err)
		}
		if err := firewall.UnguardUplink(hc, name); err != nil {
			return fmt.Errorf("restore uplink forwarding: %w", err)
		}
		delete(rec.Uplinks, name)
		if err := writeFwdRecord(dir, rec); err != nil {
			return err
		}
	}
	return nil
}

// rootOf returns the state root of a sandbox state directory
// (<root>/sandboxes/<key>), or "" if dir is not laid out that way.
func rootOf(dir string) string {
	dir = filepath.Clean(dir)
	if filepath.Base(filepath.Dir(dir)) != "sandboxes" {
		return ""
	}
	return filepath.Dir(filepath.Dir(dir))
}
