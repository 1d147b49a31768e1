package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// Jailer starts Firecracker through Firecracker's jailer: a chroot at
// <ChrootBase>/<exec name>/<id>/root holding hard links (or copies, across
// file systems) of the kernel and rootfs, owned by a per-VM uid/gid; the
// sandbox's netns; a new PID namespace; cgroup limits; resource limits.
type Jailer struct {
	Binary        string   // jailer executable; "" means "jailer"
	ChrootBase    string   // e.g. /srv/jailer
	UID, GID      int      // per-VM ids, never 0
	CgroupVersion int      // 1 or 2
	Cgroups       []string // "<file>=<value>", e.g. "cpu.max=50000 100000"
	ResourceLimit []string // "<resource>=<value>", e.g. "no-file=1024"
	// ConfigFile makes Firecracker read its configuration from a file
	// written into the chroot instead of the API calls.
	ConfigFile bool
}

func (j *Jailer) chrootRoot(id string) string {
	return filepath.Join(j.ChrootBase, "firecracker", id, "root")
}

func (j *Jailer) validate() error {
	if j.UID <= 0 || j.GID <= 0 {
		return errors.New("uid and gid: must be non-zero (one per VM)")
	}
	if j.CgroupVersion != 1 && j.CgroupVersion != 2 {
		return fmt.Errorf("cgroup version %d: want 1 or 2", j.CgroupVersion)
	}
	if j.ChrootBase == "" || !filepath.IsAbs(j.ChrootBase) {
		return errors.New("chroot base: an absolute path is required")
	}
	return nil
}

// argv is the jailer's command line; Firecracker's own flags follow "--".
// The firecracker binary must be named "firecracker" (the jailer derives
// the chroot path from the executable's name).
func (j *Jailer) argv(cfg Config) []string {
	bin := j.Binary
	if bin == "" {
		bin = "jailer"
	}
	a := []string{bin, "--id", cfg.ID, "--exec-file", cfg.Binary,
		"--uid", strconv.Itoa(j.UID), "--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBase, "--cgroup-version", strconv.Itoa(j.CgroupVersion), "--new-pid-ns"}
	if cfg.NetNS != "" {
		a = append(a, "--netns", cfg.NetNS)
	}
	for _, c := range j.Cgroups {
		a = append(a, "--cgroup", c)
	}
	for _, r := range j.ResourceLimit {
		a = append(a, "--resource-limit", r)
	}
	a = append(a, "--", "--api-sock", "/"+APISocket)
	if j.ConfigFile {
		a = append(a, "--config-file", "/vm-config.json")
	}
	return a
}

// stage links the kernel and rootfs into the chroot and hands the chroot's
// per-VM files to the VM's uid/gid. It returns the paths as Firecracker
// sees them inside the chroot.
func (j *Jailer) stage(cfg Config, root string) (kernel, rootfs string, err error) {
	if err := j.validate(); err != nil {
		return "", "", err
	}
	for _, f := range []struct{ src, dst string }{{cfg.Image.Kernel, "vmlinuz"}, {cfg.Image.Rootfs, "rootfs.ext4"}} {
		if err := linkOrCopy(f.src, filepath.Join(root, f.dst)); err != nil {
			return "", "", err
		}
	}
	for _, f := range []string{initrdFile, rwFile} {
		if err := os.Chown(filepath.Join(root, f), j.UID, j.GID); err != nil {
			return "", "", err
		}
	}
	if j.ConfigFile {
		c := ConfigFile{
			BootSource:    BootSource{KernelImagePath: "/vmlinuz", InitrdPath: "/" + initrdFile, BootArgs: BootArgs(cfg)},
			Drives:        []Drive{{DriveID: "rootfs", PathOnHost: "/rootfs.ext4", IsReadOnly: true}, {DriveID: "rw", PathOnHost: "/" + rwFile}},
			MachineConfig: MachineConfiguration{VcpuCount: cfg.CPUs, MemSizeMib: cfg.MemoryMiB, TrackDirtyPages: cfg.TrackDirtyPages},
			Vsock:         &Vsock{GuestCID: 3, UDSPath: "/" + VsockSocket},
			Entropy:       &EntropyDevice{},
			Logger:        &Logger{LogPath: "/" + LogFile, Level: "Info"},
			Metrics:       &Metrics{MetricsPath: "/" + MetricsFile},
		}
		if cfg.Tap != "" {
			c.NetworkInterfaces = []NetworkInterface{{IfaceID: "eth0", HostDevName: cfg.Tap, GuestMAC: cfg.MAC}}
		}
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(root, "vm-config.json"), b, 0o644); err != nil {
			return "", "", err
		}
	}
	return "/vmlinuz", "/rootfs.ext4", nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// cleanup removes the VM's chroot (<base>/firecracker/<id>).
func (j *Jailer) cleanup(id, _ string) error {
	if id == "" || j.ChrootBase == "" {
		return nil
	}
	return os.RemoveAll(filepath.Join(j.ChrootBase, "firecracker", id))
}
