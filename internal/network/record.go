package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
)

// RecordFile is the name of the record in a sandbox's state directory.
const RecordFile = "net.json"

// record lists every object a sandbox's network has or may have. It is
// written before each object is made, so it always names a superset of
// what exists.
type record struct {
	Version  int           `json:"version"`
	Key      string        `json:"key"`
	Names    Names         `json:"names"`
	NetnsDir string        `json:"netns_dir"`
	Lease    *netns.Lease  `json:"lease,omitempty"`
	Target   *targetRecord `json:"target,omitempty"`
	// Slot is the pool slot directory this network was claimed from.
	Slot string `json:"slot,omitempty"`
	// Format is the firewall.Format of the build that made the network
	// (0 in records of builds before formats): a pool slot of another
	// format is destroyed, never claimed.
	Format int `json:"format,omitempty"`
}

// targetRecord is a firewall.Target in JSON form, so another process
// (`ironclaw net show`) can rebuild and verify the ruleset.
type targetRecord struct {
	Allow    []string          `json:"allow"`
	Sandbox  netip.Addr        `json:"sandbox_addr"`
	Host     netip.Addr        `json:"host_addr"`
	Deny     []netip.Prefix    `json:"deny"`
	Services firewall.Services `json:"services"`
	// Guest is set for a micro-VM's network (LinkTap).
	Guest *firewall.Guest `json:"guest,omitempty"`
	// Version is the host policy version of this target (see
	// firewall.GenerationOf); 0 in records of older builds means 1.
	Version uint32 `json:"version,omitempty"`
}

// version returns the host policy version the record's target was
// applied with.
func (r *record) version() uint32 {
	if r.Target == nil || r.Target.Version == 0 {
		return 1
	}
	return r.Target.Version
}

func (r *record) netnsPath() string { return filepath.Join(r.NetnsDir, r.Names.Netns) }

func (r *record) target() (*firewall.Target, error) {
	if r.Target == nil || r.Lease == nil {
		return nil, errors.New("record has no firewall target")
	}
	p, err := firewall.ParsePolicy(r.Target.Allow)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	return &firewall.Target{
		Policy:      p,
		SandboxAddr: r.Target.Sandbox, HostAddr: r.Target.Host, HostIf: r.Names.HostIf,
		Deny: r.Target.Deny, Services: r.Target.Services, Guest: r.Target.Guest,
	}, nil
}

// writeRecord writes r to dir/name atomically (temp file, rename). It does
// not fsync: the record must survive the death of the process, which the
// page cache guarantees, not a reboot, which takes every kernel object the
// record names with it (and the state root is normally tmpfs anyway).
func writeRecord(dir, name string, r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readRecord reads dir/name; a missing file returns (nil, nil).
func readRecord(dir, name string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
	}
	if r.Version != 1 {
		return nil, fmt.Errorf("read %s: unknown version %d", filepath.Join(dir, name), r.Version)
	}
	return &r, nil
}
