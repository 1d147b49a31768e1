package initproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// The host and the sandbox's init talk over a private Unix stream socket
// pair (fd 3 in init). Each message is a 4-byte big-endian length and a
// body in the binary encoding of wire.go; file descriptors ride along as
// SCM_RIGHTS on the length. (The JSON tags below name the fields; JSON is
// not the wire format since protocol 2.)
// The socket also ties the two lives together: when the host dies, init
// reads EOF and takes the sandbox down with it.

// ProtocolVersion is the version of the host↔init protocol. The host and
// the init binary (the same ironclaw binary, or an ironclaw-agent built
// from the same source) must agree; init refuses any other.
//
// Version 2 replaced the JSON bodies of version 1 with the binary encoding
// of wire.go.
const ProtocolVersion = 2

// maxFrame bounds a control message. The largest is the init config, whose
// size is dominated by the environment and the argument list.
const maxFrame = 16 << 20

// Config is everything init needs to build the sandbox, sent once.
type Config struct {
	// Protocol is the host's ProtocolVersion.
	Protocol int `json:"protocol"`
	// ExeFD is the descriptor init was executed from (the host passes
	// the init binary as an O_PATH descriptor); init closes it.
	ExeFD    int    `json:"exe_fd,omitempty"`
	Hostname string `json:"hostname"`
	// NewRoot is the (empty) directory the sandbox root is built on.
	NewRoot string `json:"new_root"`
	// Sources are the bind mounts to make, in order. Host-side paths are
	// passed as O_PATH descriptors: init runs as an unprivileged host uid
	// and could not walk to them (the host opens them as real root).
	Sources []BindSource `json:"sources"`
	// Etc holds the generated files of /etc, by name.
	Etc map[string]string `json:"etc"`
	// Symlinks are symlinks of the source root (/bin -> usr/bin on a
	// merged-/usr host, /etc/os-release), recreated as they are.
	Symlinks map[string]string `json:"symlinks"`

	Command []string     `json:"command"`
	Env     []string     `json:"env"`
	User    sandbox.User `json:"user"`
	Cwd     string       `json:"cwd"`
	TTY     bool         `json:"tty"`
	Rlimits []Rlimit     `json:"rlimits"`
	// Loopback brings up lo in a sandbox-owned network namespace.
	Loopback bool `json:"loopback"`
	// Trace asks init to report how long each of its steps took.
	Trace bool `json:"trace,omitempty"`
	// Seccomp is the compiled filter installed on every launching thread.
	Seccomp *seccomp.Program `json:"seccomp"`
	// Agent, when set, makes init serve the agent protocol for a
	// long-lived sandbox instead of running one command.
	Agent *AgentInit `json:"agent,omitempty"`
	// Persistent keeps the sandbox alive when the host process that made
	// it exits; a daemon re-attaches to it through the agent socket.
	Persistent bool `json:"persistent,omitempty"`
	// LockFD is the state directory's lock, held by init for the
	// sandbox's whole life: GC takes the sandbox for dead only when both
	// its owner and its init are gone.
	LockFD int `json:"lock_fd"`
	// Epoch is the host's clock (Unix nanoseconds) when it began to start
	// init, so traced init steps line up with the host's.
	Epoch int64 `json:"epoch,omitempty"`
}

// BindSource is one bind mount: from the descriptor FD (in init) to Target
// inside the sandbox.
type BindSource struct {
	FD       int    `json:"fd"`
	Target   string `json:"target"`
	Writable bool   `json:"writable"`
	Dir      bool   `json:"dir"`
	// System marks the host's system directories and rootfs entries; they
	// are part of the read-only view Landlock grants execution in.
	System bool `json:"system"`
}

// AgentInit configures the agent a long-lived sandbox's init serves.
type AgentInit struct {
	// ListenFD is a listening Unix socket the host created in the
	// sandbox's state directory (outside the sandbox's view).
	ListenFD    int    `json:"listen_fd"`
	Token       []byte `json:"token"`
	MaxFileSize int64  `json:"max_file_size,omitempty"`
	// WorkTasksFD, when not 0, is the file through which threads join the
	// workloads' own pids cgroup (tasks on cgroup v1, cgroup.threads of a
	// threaded group on v2): the launcher threads move themselves there
	// before they are confined, so commands start in it and a fork bomb
	// cannot take the agent's threads.
	WorkTasksFD int `json:"work_tasks_fd,omitempty"`
}

// Rlimit is one resource limit init sets before starting commands.
type Rlimit struct {
	Resource int    `json:"resource"`
	Cur      uint64 `json:"cur"`
	Max      uint64 `json:"max"`
}

// HostMsg is sent by the host to init.
type HostMsg struct {
	Config *Config `json:"config,omitempty"`
	// Placed says init is in the sandbox's cgroup: it may now create its
	// cgroup namespace, rooted there.
	Placed bool `json:"placed,omitempty"`
	// Go lets init start the command once the host has verified the
	// launching thread.
	Go bool `json:"go,omitempty"`
}

// InitMsg is sent by init to the host.
type InitMsg struct {
	// Ready says the launching thread is confined and waits for Go. TID
	// is its thread ID inside the sandbox's PID namespace.
	Ready *ReadyMsg `json:"ready,omitempty"`
	// Started carries the command's PID inside the sandbox.
	Started *StartedMsg `json:"started,omitempty"`
	// Exited carries how the command ended.
	Exited *ExitStatus `json:"exited,omitempty"`
	// Error is a start failure: the step and the cause.
	Error *StepError `json:"error,omitempty"`
}

// ReadyMsg says init has confined its launching thread.
type ReadyMsg struct {
	TID int `json:"tid"`
	// Steps are init's step timings, with Trace.
	Steps []string `json:"steps,omitempty"`
}

// StartedMsg says the command runs.
type StartedMsg struct {
	PID int `json:"pid"`
}

// ExitStatus is how the command of `ironclaw run` ended.
type ExitStatus struct {
	Code   int `json:"code"`
	Signal int `json:"signal,omitempty"`
}

// StepError is a failed start: the step, the cause and its errno.
type StepError struct {
	Step    string `json:"step"`
	Message string `json:"message"`
	// Errno is the errno of the cause, when there is one, so that the host
	// can tell "command not found" from "permission denied".
	Errno int `json:"errno,omitempty"`
}

// Conn is one end of the control socket.
type Conn struct {
	c *net.UnixConn
}

// NewConn wraps f, a Unix stream socket, as a Conn; it takes f over.
func NewConn(f *os.File) (*Conn, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("control socket: %T is not a Unix socket", c)
	}
	return &Conn{c: uc}, nil
}

// Message is a control message: a HostMsg or an InitMsg.
type Message interface {
	AppendWire(b []byte) []byte
}

// Decoder is what a control message is received into: a *HostMsg or an
// *InitMsg.
type Decoder interface {
	DecodeWire(b []byte) error
}

// Send writes m as one frame, with files attached.
func (c *Conn) Send(m Message, files ...*os.File) error {
	body := m.AppendWire(nil)
	if len(body) > maxFrame {
		return fmt.Errorf("encode control message: %d bytes exceeds the %d limit", len(body), maxFrame)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := c.c.WriteMsgUnix(hdr[:], oob, nil); err != nil {
		return fmt.Errorf("send control message: %w", err)
	}
	if _, err := c.c.Write(body); err != nil {
		return fmt.Errorf("send control message: %w", err)
	}
	return nil
}

// Recv reads one frame into m and returns the files attached to it.
func (c *Conn) Recv(m Decoder) ([]*os.File, error) {
	var hdr [4]byte
	oob := make([]byte, syscall.CmsgSpace(16*4))
	n, oobn, _, _, err := c.c.ReadMsgUnix(hdr[:], oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	files, err := parseRights(oob[:oobn])
	if err != nil {
		return nil, err
	}
	if n < len(hdr) {
		if _, err := io.ReadFull(c.c, hdr[n:]); err != nil {
			CloseAll(files)
			return nil, fmt.Errorf("read control frame: %w", err)
		}
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxFrame {
		CloseAll(files)
		return nil, fmt.Errorf("read control frame: %d bytes exceeds the %d limit", size, maxFrame)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.c, body); err != nil {
		CloseAll(files)
		return nil, fmt.Errorf("read control frame: %w", err)
	}
	if err := m.DecodeWire(body); err != nil {
		CloseAll(files)
		return nil, fmt.Errorf("decode control frame: %w", err)
	}
	return files, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message rights: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			CloseAll(files)
			return nil, fmt.Errorf("parse control message rights: %w", err)
		}
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "ctl-fd"))
		}
	}
	return files, nil
}

// CloseAll closes every file in fs.
func CloseAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// errnoOf returns the errno inside err, or 0.
func errnoOf(err error) int {
	var en syscall.Errno
	if errors.As(err, &en) {
		return int(en)
	}
	return 0
}
