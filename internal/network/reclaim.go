package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Reclaim removes whatever the network record in dir (a sandbox state
// directory whose owner is gone) names and still exists: its elements in the
// host table's sets, the veth pair, the namespace, the address lease; then
// the record. Objects are only touched if the record's names are exactly the
// ones its key derives, and a pool slot only if it is a slot of the root
// dir lives in (dir is <root>/sandboxes/<key>) claimed by this sandbox, so
// a damaged or forged record cannot aim Reclaim at anything else. It is
// idempotent and a missing record is not an error; the record is removed
// only once everything it names is gone.
func Reclaim(dir string) error {
	rec, err := readRecord(dir, RecordFile)
	if err != nil || rec == nil {
		return err
	}
	if rec.Slot != "" {
		// The network came from the pool: the slot is destroyed, never
		// reused. The record goes only once the slot is gone.
		if err := reclaimSlot(dir, rec); err != nil {
			return err
		}
		return errors.Join(removeRecord(dir), restoreRootForwarding(dir))
	}
	if err := removeObjects(rec); err != nil {
		return err
	}
	return errors.Join(removeRecord(dir), restoreRootForwarding(dir))
}

// restoreRootForwarding restores the uplink forwarding of the root dir
// lives in, if it was the root's last sandbox network (see
// restoreForwarding). A dir outside the state layout has no known root:
// Maintain, which `ironclaw gc` runs, does it then.
func restoreRootForwarding(dir string) error {
	root := rootOf(dir)
	if root == "" {
		return nil
	}
	return restoreForwarding(root)
}

func checkRecord(rec *record) error {
	key := sandbox.Key(rec.Key)
	switch {
	case !key.Valid():
		return fmt.Errorf("network record: invalid key %q", rec.Key)
	case rec.Names != NamesOf(key):
		return fmt.Errorf("network record of %s: names %+v are not the ones its key derives", rec.Key, rec.Names)
	case !filepath.IsAbs(rec.NetnsDir):
		return fmt.Errorf("network record of %s: netns dir %q is not absolute", rec.Key, rec.NetnsDir)
	}
	if rec.Lease != nil {
		if _, err := strconv.Atoi(filepath.Base(rec.Lease.Path)); err != nil || !filepath.IsAbs(rec.Lease.Path) {
			return fmt.Errorf("network record of %s: bad lease path %q", rec.Key, rec.Lease.Path)
		}
	}
	return nil
}

// removeObjects removes every kernel object and the lease rec names, in the
// order that never leaves a link without its host rules: host rules last
// would briefly leave a routed link unfiltered, so the link and namespace
// go first.
func removeObjects(rec *record) error {
	if err := checkRecord(rec); err != nil {
		return err
	}
	var errs []error
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	// Deleting the host side deletes the pair.
	if err := netns.DeleteLink(host, rec.Names.HostIf); err != nil {
		errs = append(errs, err)
	}
	if err := netns.Remove(filepath.Join(rec.NetnsDir, rec.Names.Netns)); err != nil {
		errs = append(errs, err)
	}
	hc, err := nftables.New()
	if err != nil {
		errs = append(errs, err)
	} else {
		if err := firewall.RemoveHost(hc, rec.Names.HostIf); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && rec.Lease != nil {
		errs = append(errs, netns.Release(rec.Lease.Path, rec.Key))
	}
	return errors.Join(errs...)
}

func removeRecord(dir string) error {
	for _, name := range []string{RecordFile, RecordFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove network record: %w", err)
		}
	}
	return nil
}
