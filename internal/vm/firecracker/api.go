package firecracker

// Request and response bodies of Firecracker's API (v1.16.1). Field names
// and required fields follow testdata/firecracker-api-v1.16.1.yaml; the
// contract test validates every request the driver sends against it.

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	PathOnHost   string `json:"path_on_host"`
	CacheType    string `json:"cache_type,omitempty"`
	IOEngine     string `json:"io_engine,omitempty"`
}

// MachineConfiguration is PUT /machine-config.
type MachineConfiguration struct {
	VcpuCount       int  `json:"vcpu_count"`
	MemSizeMib      int  `json:"mem_size_mib"`
	Smt             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// EntropyDevice is PUT /entropy.
type EntropyDevice struct{}

// Logger is PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// InstanceActionInfo is PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// VMState is PATCH /vm.
type VMState struct {
	State string `json:"state"` // "Paused" or "Resumed"
}

// SnapshotCreateParams is PUT /snapshot/create.
type SnapshotCreateParams struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// MemoryBackend says where restored guest memory comes from.
type MemoryBackend struct {
	BackendType string `json:"backend_type"` // "File" or "Uffd"
	BackendPath string `json:"backend_path"`
}

// VsockOverride replaces the vsock socket path on restore.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// NetworkOverride replaces a tap on restore.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoadParams is PUT /snapshot/load.
type SnapshotLoadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	ResumeVM         bool              `json:"resume_vm"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
}

// Version is GET /version.
type Version struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// APIError is the body of a failed request.
type APIError struct {
	FaultMessage string `json:"fault_message"`
}

// ConfigFile is the --config-file form of the same configuration, written
// into the jail when the jailer starts Firecracker without the API calls.
type ConfigFile struct {
	BootSource        BootSource           `json:"boot-source"`
	Drives            []Drive              `json:"drives"`
	MachineConfig     MachineConfiguration `json:"machine-config"`
	NetworkInterfaces []NetworkInterface   `json:"network-interfaces,omitempty"`
	Vsock             *Vsock               `json:"vsock,omitempty"`
	Entropy           *EntropyDevice       `json:"entropy,omitempty"`
	Logger            *Logger              `json:"logger,omitempty"`
	Metrics           *Metrics             `json:"metrics,omitempty"`
}
