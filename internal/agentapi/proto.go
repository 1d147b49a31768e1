package agentapi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Version is the protocol version this package speaks. Host and agent must
// speak the same version; the agent rejects any other in the handshake.
const Version = 1

// MaxFrame is the largest frame payload accepted, in bytes. Data is sent in
// chunks of at most DataChunk bytes; control messages are far smaller.
const MaxFrame = 1 << 20

// DataChunk is the largest data payload a sender puts in one frame.
const DataChunk = 32 << 10

// maxHelloFrame bounds the handshake frames, which are read before the peer
// is authenticated.
const maxHelloFrame = 4 << 10

// FrameType says what a frame's payload is.
type FrameType uint8

// Frame types. Request, Response, Hello, HelloReply and Exit carry JSON;
// the data types carry raw bytes; the EOF types carry nothing.
const (
	FrameHello      FrameType = 1  // host → agent: Hello
	FrameHelloReply FrameType = 2  // agent → host: HelloReply
	FrameRequest    FrameType = 3  // host → agent: Request, first frame of a stream
	FrameResponse   FrameType = 4  // agent → host: Response
	FrameStdin      FrameType = 5  // host → agent: stdin bytes, or file bytes on upload
	FrameStdinEOF   FrameType = 6  // host → agent: end of stdin / upload
	FrameStdout     FrameType = 7  // agent → host: stdout bytes, or file bytes on download
	FrameStderr     FrameType = 8  // agent → host: stderr bytes
	FrameExit       FrameType = 9  // agent → host: ExitStatus, last frame of an exec
	FrameEOF        FrameType = 10 // agent → host: end of a download
	FrameError      FrameType = 11 // agent → host: Response with Error, mid-transfer
)

func (t FrameType) String() string {
	names := [...]string{"", "hello", "hello-reply", "request", "response", "stdin", "stdin-eof", "stdout", "stderr", "exit", "eof", "error"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

func (t FrameType) valid() bool { return t >= FrameHello && t <= FrameError }

// Frame is one unit on a stream.
type Frame struct {
	Type    FrameType
	Payload []byte
}

// Protocol errors. Errors from the agent's side of an operation arrive as
// *RemoteError.
var (
	// ErrFrame marks a malformed frame: unknown type or oversized length.
	ErrFrame = errors.New("malformed agent frame")
	// ErrNotConnected is returned by a Client that was never connected.
	ErrNotConnected = errors.New("agent client not connected")
	// ErrClosed is returned by a Client after Close.
	ErrClosed = errors.New("agent client closed")
	// ErrAuth marks a handshake the agent refused (bad token or version).
	ErrAuth = errors.New("agent refused the handshake")
	// ErrTooLarge marks a file over the size limit.
	ErrTooLarge = errors.New("file exceeds the size limit")
	// ErrProtocol marks a session the host ended because the agent broke
	// the protocol (it opened a stream of its own).
	ErrProtocol = errors.New("agent broke the protocol")
)

// WriteFrame writes one frame to w in a single Write call, so frames written
// by goroutines that serialise their calls never interleave.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("write %s frame: payload of %d bytes over the %d limit: %w", t, len(payload), MaxFrame, ErrFrame)
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// WriteJSON marshals v with encoding/json and writes it as one frame.
func WriteJSON(w io.Writer, t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", t, err)
	}
	return WriteFrame(w, t, b)
}

// ReadFrame reads exactly one frame from r, reading no byte past it. It
// rejects unknown types and payloads over max bytes (at most MaxFrame)
// before allocating.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	if max <= 0 || max > MaxFrame {
		max = MaxFrame
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("read frame header: truncated: %w", ErrFrame)
		}
		return Frame{}, err // io.EOF stays bare: a clean end between frames
	}
	t := FrameType(hdr[0])
	if !t.valid() {
		return Frame{}, fmt.Errorf("read frame: unknown type %d: %w", hdr[0], ErrFrame)
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if uint64(n) > uint64(max) {
		return Frame{}, fmt.Errorf("read %s frame: length %d over the %d limit: %w", t, n, max, ErrFrame)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return Frame{}, fmt.Errorf("read %s frame payload: %w: %w", t, ErrFrame, err)
	}
	return Frame{Type: t, Payload: p}, nil
}

// DecodeJSON decodes a control frame's payload into v, rejecting unknown
// fields and trailing data so a confused peer is noticed, not guessed at.
func DecodeJSON(f Frame, want FrameType, v any) error {
	if f.Type != want {
		return fmt.Errorf("decode frame: got %s, want %s: %w", f.Type, want, ErrFrame)
	}
	if err := decodeStrict(f.Payload, v); err != nil {
		return fmt.Errorf("decode %s frame: %w: %w", f.Type, ErrFrame, err)
	}
	return nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// Hello is the host's first frame on a connection.
type Hello struct {
	Version int `json:"version"`
	// Token is raw bytes (base64 in JSON): a string field would turn
	// bytes that are not UTF-8 into U+FFFD and lose the token.
	Token []byte `json:"token"`
}

// HelloReply is the agent's answer to Hello. OK is false with Error set when
// the agent refuses; it then closes the connection.
type HelloReply struct {
	Version int    `json:"version"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
}

// Op names an operation.
type Op string

// Operations. Each runs on its own stream.
const (
	OpHealth   Op = "health"
	OpExec     Op = "exec"
	OpSignal   Op = "signal"
	OpResize   Op = "resize"
	OpStat     Op = "stat"
	OpList     Op = "list"
	OpMkdir    Op = "mkdir"
	OpRemove   Op = "remove"
	OpWrite    Op = "write"
	OpRead     Op = "read"
	OpShutdown Op = "shutdown"
	OpRekey    Op = "rekey"
)

// Request is the first frame of every stream. Exactly the field that
// belongs to Op is set.
type Request struct {
	Op     Op          `json:"op"`
	Exec   *ExecSpec   `json:"exec,omitempty"`
	Signal *SignalSpec `json:"signal,omitempty"`
	Resize *ResizeSpec `json:"resize,omitempty"`
	File   *FileSpec   `json:"file,omitempty"`
	Rekey  *RekeySpec  `json:"rekey,omitempty"`
}

// ExecSpec describes a process to start in the sandbox.
type ExecSpec struct {
	Argv []string `json:"argv"`
	// Env is the complete environment as KEY=VALUE; empty means a minimal
	// default (PATH, HOME, TERM when TTY).
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; empty means "/".
	Dir string `json:"dir,omitempty"`
	// User is "uid[:gid]" or a user name from the sandbox's /etc/passwd;
	// empty means the agent's own user.
	User string `json:"user,omitempty"`
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// SignalSpec sends a signal to a running exec.
type SignalSpec struct {
	ExecID string `json:"exec_id"`
	Signal int    `json:"signal"`
}

// ResizeSpec resizes the terminal of a running TTY exec.
type ResizeSpec struct {
	ExecID string `json:"exec_id"`
	Rows   uint16 `json:"rows"`
	Cols   uint16 `json:"cols"`
}

// FileSpec names a path for a file operation. Paths are resolved beneath the
// agent's file root; ".." and symlinks may not leave it.
type FileSpec struct {
	Path string `json:"path"`
	// Mode is the permission bits for write and mkdir (0 means 0644/0755).
	Mode uint32 `json:"mode,omitempty"`
	// Parents makes mkdir create missing parents.
	Parents bool `json:"parents,omitempty"`
	// Recursive makes remove delete a directory tree.
	Recursive bool `json:"recursive,omitempty"`
	// Limit caps the bytes a read may return or a write may store; the
	// agent also applies its own limit and uses the smaller.
	Limit int64 `json:"limit,omitempty"`
}

// RekeySpec replaces the agent's token (used on clones restored from a
// snapshot, which all carry the template's token) and mixes fresh entropy
// into the guest's random pool.
type RekeySpec struct {
	Token   string `json:"token"`
	Entropy []byte `json:"entropy,omitempty"`
}

// Response answers a Request. Error is set when the operation failed; Code
// classifies it (see the Code constants).
type Response struct {
	Error  string     `json:"error,omitempty"`
	Code   string     `json:"code,omitempty"`
	ExecID string     `json:"exec_id,omitempty"`
	PID    int        `json:"pid,omitempty"`
	Health *Health    `json:"health,omitempty"`
	Info   *FileInfo  `json:"info,omitempty"`
	List   []FileInfo `json:"list,omitempty"`
	// Written is the byte count stored by a write.
	Written int64 `json:"written,omitempty"`
}

// Error codes in Response.Code.
const (
	CodeInvalid  = "invalid"   // bad request field
	CodeNotFound = "not_found" // path or exec does not exist
	CodeEscape   = "escape"    // path resolves outside the file root
	CodeTooLarge = "too_large" // over a size limit
	CodeExists   = "exists"    // path already exists
	CodeInternal = "internal"  // anything else
)

// Health is the agent's self-report.
type Health struct {
	Version      int    `json:"version"`
	AgentVersion string `json:"agent_version"`
	PID          int    `json:"pid"`
	Uptime       string `json:"uptime"`
	Kernel       string `json:"kernel,omitempty"`
	Execs        int    `json:"execs"`
}

// FileInfo describes one file.
type FileInfo struct {
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Mode    os.FileMode `json:"mode"`
	ModTime time.Time   `json:"mod_time"`
	Link    string      `json:"link,omitempty"`
}

// IsDir reports whether fi describes a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

// ExitStatus is how an exec ended. Signal is non-zero when a signal killed
// the process; Code is then -1.
type ExitStatus struct {
	Code   int    `json:"code"`
	Signal int    `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// RemoteError is an operation's failure as reported by the agent.
type RemoteError struct {
	Op   Op
	Code string
	Msg  string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("agent %s: %s", e.Op, e.Msg) }

// Is lets errors.Is match the sentinels a Code stands for.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrTooLarge:
		return e.Code == CodeTooLarge
	case os.ErrNotExist:
		return e.Code == CodeNotFound
	case os.ErrExist:
		return e.Code == CodeExists
	case ErrEscape:
		return e.Code == CodeEscape
	}
	return false
}

// ErrEscape marks a path that resolves outside the agent's file root.
var ErrEscape = errors.New("path escapes the sandbox file root")
