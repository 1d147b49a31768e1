package api

import (
	"time"
)

// Version prefixes every versioned path.
const Version = "v1"

// ExecUpgrade is the Upgrade token of an exec stream (see doc.go).
const ExecUpgrade = "ironclaw-exec.v2"

// Mount grants a host path to a sandbox.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	Writable bool   `json:"writable,omitempty"`
}

// Resources are a sandbox's limits. In a create request an omitted field
// takes the default; 0 means unlimited.
type Resources struct {
	MemoryBytes   *int64   `json:"memory_bytes,omitempty"`
	Pids          *int64   `json:"pids,omitempty"`
	CPUs          *float64 `json:"cpus,omitempty"`
	NoFile        *uint64  `json:"nofile,omitempty"`
	FileSizeBytes *int64   `json:"file_size_bytes,omitempty"`
}

// Network is a sandbox's egress policy: allow rules as `ironclaw run
// --allow` takes them. None means loopback only.
type Network struct {
	Allow []string `json:"allow"`
}

// Seccomp selects a sandbox's system call filter.
type Seccomp struct {
	Profile string `json:"profile,omitempty"`
	Audit   bool   `json:"audit,omitempty"`
}

// CreateRequest is the body of POST /v1/sandboxes.
type CreateRequest struct {
	ID      string   `json:"id,omitempty"`
	Backend string   `json:"backend,omitempty"`
	User    string   `json:"user,omitempty"`
	Env     []string `json:"env,omitempty"`
	Workdir string   `json:"workdir,omitempty"`
	Mounts  []Mount  `json:"mounts,omitempty"`
	Rootfs  string   `json:"rootfs,omitempty"`
	// Resources: nil takes the defaults for every limit.
	Resources *Resources `json:"resources,omitempty"`
	Network   *Network   `json:"network,omitempty"`
	Seccomp   *Seccomp   `json:"seccomp,omitempty"`
	// TTL and IdleTimeout are Go durations ("30m", "90s"); empty is none.
	TTL         string            `json:"ttl,omitempty"`
	IdleTimeout string            `json:"idle_timeout,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Pool false makes the create start a fresh sandbox even when a warm
	// pool member is ready. Default true.
	Pool *bool `json:"pool,omitempty"`
}

// Usage is a sandbox's live resource use.
type Usage struct {
	MemoryBytes uint64 `json:"memory_bytes"`
	Pids        uint64 `json:"pids"`
}

// Exit says how a sandbox's init ended on its own.
type Exit struct {
	Time      time.Time `json:"time"`
	Reason    string    `json:"reason"`
	OOMKilled bool      `json:"oom_killed"`
}

// Sandbox describes one sandbox.
type Sandbox struct {
	ID        string            `json:"id"`
	Backend   string            `json:"backend"`
	State     string            `json:"state"`
	BackendID string            `json:"backend_id"`
	Key       string            `json:"key"`
	Hostname  string            `json:"hostname"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"created_at"`
	StartedAt *time.Time        `json:"started_at,omitempty"`
	ExpiresAt *time.Time        `json:"expires_at,omitempty"`
	// LastActiveAt is the last exec or file operation.
	LastActiveAt  *time.Time `json:"last_active_at,omitempty"`
	TTL           string     `json:"ttl,omitempty"`
	IdleTimeout   string     `json:"idle_timeout,omitempty"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	FromPool      bool       `json:"from_pool"`
	User          string     `json:"user"`
	// EnvNames lists the names of the spec's env (values may be secret).
	EnvNames    []string  `json:"env_names"`
	Workdir     string    `json:"workdir,omitempty"`
	Rootfs      string    `json:"rootfs,omitempty"`
	Mounts      []Mount   `json:"mounts"`
	Limits      Resources `json:"limits"`
	Network     Network   `json:"network"`
	Seccomp     Seccomp   `json:"seccomp"`
	InitPID     int       `json:"init_pid,omitempty"`
	ActiveExecs int       `json:"active_execs"`
	Usage       *Usage    `json:"usage,omitempty"`
	Addresses   []string  `json:"addresses"`
	Exit        *Exit     `json:"exit,omitempty"`
}

// SandboxList is the body of GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []Sandbox `json:"sandboxes"`
}

// NetworkUpdate is the body of PUT /v1/sandboxes/{id}/network.
type NetworkUpdate struct {
	Allow []string `json:"allow"`
}

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec.
type ExecRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	User string   `json:"user,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	// Timeout is a Go duration after which the process is killed.
	Timeout string `json:"timeout,omitempty"`
	// DestroyAfter destroys the sandbox when the exec ends or its
	// client goes away.
	DestroyAfter bool `json:"destroy_after,omitempty"`
	// Stdin is the whole input of a buffered exec (base64 in JSON). An
	// exec stream sends its input as frames instead.
	Stdin []byte `json:"stdin,omitempty"`
}

// ExitStatus is how an exec ended.
type ExitStatus struct {
	ExitCode  int    `json:"exit_code"`
	Signal    int    `json:"signal,omitempty"`
	OOMKilled bool   `json:"oom_killed,omitempty"`
	TimedOut  bool   `json:"timed_out,omitempty"`
	Error     string `json:"error,omitempty"`
}

// ExecResult is the answer to a buffered exec.
type ExecResult struct {
	ExitStatus
	ExecID          string `json:"exec_id"`
	Stdout          []byte `json:"stdout"`
	Stderr          []byte `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
}

// ExecStarted is the first frame (a response frame) of an exec stream.
type ExecStarted struct {
	ExecID string `json:"exec_id"`
	PID    int    `json:"pid"`
	// StdinWindow is how many bytes of stdin the client may send before
	// the daemon grants more with ExecWindow frames.
	StdinWindow int `json:"stdin_window"`
}

// ExecStdinWindow is the stdin window of an exec stream, in bytes: as much
// as the agent's stream window.
const ExecStdinWindow = 256 << 10

// ExecWindow is a response frame the daemon sends on an exec stream once
// it has passed Stdin more bytes of input on to the process: the client
// may send that many more. The daemon never holds more than the window
// of unread input, so it always reads the connection and control frames
// never wait behind input the process does not read.
type ExecWindow struct {
	Stdin int `json:"stdin"`
}

// ExecControl is a request frame a client sends on an exec stream: a
// signal to deliver, or a terminal size.
type ExecControl struct {
	Signal int         `json:"signal,omitempty"`
	Resize *TerminalSz `json:"resize,omitempty"`
}

// TerminalSz is a terminal size.
type TerminalSz struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// FileInfo describes one file in a sandbox.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Type    string    `json:"type"` // file, dir, symlink or other
	Mode    uint32    `json:"mode"` // permission bits
	ModTime time.Time `json:"mod_time"`
	Link    string    `json:"link,omitempty"`
}

// FileList is the body of GET /v1/sandboxes/{id}/files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"`
}

// MkdirRequest is the body of POST /v1/sandboxes/{id}/files/mkdir.
type MkdirRequest struct {
	Path    string `json:"path"`
	Mode    uint32 `json:"mode,omitempty"`
	Parents bool   `json:"parents,omitempty"`
}

// Written answers an upload.
type Written struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

// Event is one thing that happened to a sandbox.
type Event struct {
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Sandbox   string    `json:"sandbox"`
	Type      string    `json:"type"`
	Reason    string    `json:"reason,omitempty"`
	Step      string    `json:"step,omitempty"`
	Error     string    `json:"error,omitempty"`
	PoolID    string    `json:"pool_id,omitempty"`
	Pool      string    `json:"pool,omitempty"`
	ExecID    string    `json:"exec_id,omitempty"`
	Argv      []string  `json:"argv,omitempty"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Signal    int       `json:"signal,omitempty"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
	TimedOut  bool      `json:"timed_out,omitempty"`
	Allow     []string  `json:"allow,omitempty"`
	Duration  string    `json:"duration,omitempty"`
}

// EventList is the body of GET /v1/sandboxes/{id}/logs.
type EventList struct {
	Entries []Event `json:"entries"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status    string `json:"status"`
	Sandboxes int    `json:"sandboxes"`
}

// Error codes.
const (
	CodeMalformedJSON    = "malformed_json"
	CodeUnknownField     = "unknown_field"
	CodeInvalidField     = "invalid_field"
	CodeBodyTooLarge     = "body_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeNotFound         = "not_found"
	CodeAlreadyExists    = "already_exists"
	CodeNotRunning       = "not_running"
	CodeLimitReached     = "limit_reached"
	CodeUnsupported      = "unsupported"
	CodeUnauthorized     = "unauthorized"
	CodePathEscape       = "path_escape"
	CodeFileNotFound     = "file_not_found"
	CodeFileExists       = "file_exists"
	CodeFileTooLarge     = "file_too_large"
	CodeCommandNotFound  = "command_not_found"
	CodeNotExecutable    = "not_executable"
	CodeStartFailed      = "start_failed"
	CodeTimeout          = "timeout"
	CodeShuttingDown     = "shutting_down"
	CodeInternal         = "internal"
)

// Error is the body of every 4xx and 5xx answer: {"error": {...}}.
type Error struct {
	// Status is the HTTP status (not in the body).
	Status int `json:"-"`
	// Code is machine-readable (the Code constants).
	Code string `json:"code"`
	// Message says what went wrong, for people.
	Message string `json:"message"`
	// Field names the request field at fault, when one is.
	Field string `json:"field,omitempty"`
	// Step names the setup step that failed, for start_failed.
	Step string `json:"step,omitempty"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Message + " (field " + e.Field + ")"
	}
	return e.Message
}

// ErrorBody wraps Error on the wire.
type ErrorBody struct {
	Error *Error `json:"error"`
}
