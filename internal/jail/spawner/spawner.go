// Package spawner forks the inits of long-lived sandboxes from a small
// helper process instead of from the daemon.
//
// Creating a user namespace forces Go to fork fully rather than vfork (the
// parent must write the child's ID maps while it waits). A full fork
// copies the forking process's page tables and write-protects all of its
// memory, and each page the parent writes afterwards takes a copy-on-write
// fault with a TLB shootdown to the other CPUs. For a daemon with a large
// heap that starts sandboxes back to back this was about a fifth of all
// the CPU a create costs (perf: copy_process, do_wp_page, and the child's
// exit_mmap of the copy at exec). The spawner is the init binary started
// once in another mode (argv[0] Arg0); its address space is a few MiB, so
// its forks are cheap, and the daemon itself starts it with vfork.
//
// The spawner is the parent of what it starts: it reaps each child and
// reports how it ended. It exits when the daemon's end of its socket
// closes; its children then live on, as persistent sandboxes outlive
// their daemon.
//
// Wire format: SOCK_SEQPACKET messages, one JSON object each (encoding/
// json), with descriptors in SCM_RIGHTS.
package spawner

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
)

// Arg0 is the argv[0] that makes an init binary the spawner (see
// MaybeMain).
const Arg0 = "ironclaw-spawner"

// sockFD is the spawner's end of its socket.
const sockFD = 3

// maxMsg bounds one message; a request carries argv and environment.
const maxMsg = 1 << 20

// maxFiles bounds the descriptors of one request (SCM_MAX_FD is 253).
const maxFiles = 64

// request asks the spawner to start a process. Its descriptors, in order:
// Files of them become the child's descriptors 0, 1, 2, ...; then the
// network namespace to fork from (NetNS) and the cgroup to clone into
// (CgroupFD).
type request struct {
	Seq   uint64   `json:"seq"`
	Path  string   `json:"path"`
	Args  []string `json:"args"`
	Env   []string `json:"env"`
	Files int      `json:"files"`
	NetNS bool     `json:"netns,omitempty"`

	Cloneflags                 uintptr                `json:"cloneflags"`
	UidMappings                []syscall.SysProcIDMap `json:"uid_mappings,omitempty"`
	GidMappings                []syscall.SysProcIDMap `json:"gid_mappings,omitempty"`
	GidMappingsEnableSetgroups bool                   `json:"setgroups,omitempty"`
	Credential                 *syscall.Credential    `json:"credential,omitempty"`
	Setsid                     bool                   `json:"setsid,omitempty"`
	CgroupFD                   bool                   `json:"cgroup_fd,omitempty"`
}

// fds is the number of descriptors r comes with.
func (r *request) fds() int {
	n := r.Files
	if r.NetNS {
		n++
	}
	if r.CgroupFD {
		n++
	}
	return n
}

// validate checks a decoded request before anything is done with it.
func (r *request) validate(nfds int) error {
	switch {
	case r.Path == "":
		return errors.New("request: empty path")
	case len(r.Args) == 0:
		return errors.New("request: empty args")
	case r.Files < 3 || r.Files > maxFiles:
		return fmt.Errorf("request: files %d out of range [3, %d]", r.Files, maxFiles)
	case r.fds() != nfds:
		return fmt.Errorf("request: names %d descriptors, came with %d", r.fds(), nfds)
	}
	return nil
}

// reply answers a request (Seq set; PID, or Err) or reports that a child
// has been reaped (Exit set). A started child's pidfd comes with its
// reply.
type reply struct {
	Seq  uint64 `json:"seq,omitempty"`
	PID  int    `json:"pid,omitempty"`
	Err  string `json:"err,omitempty"`
	Exit *exit  `json:"exit,omitempty"`
}

// exit is how a child ended.
type exit struct {
	PID    int    `json:"pid"`
	Status uint32 `json:"status"` // a wait status
}

func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode spawner message: %w", err)
	}
	return nil
}
