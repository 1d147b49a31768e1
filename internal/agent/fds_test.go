package agent

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// TestExecInheritsNoAgentFiles: the agent may hold descriptors without
// close-on-exec, handed to it rather than opened by Go: a jail's init
// keeps the host-opened cgroup file through which threads join the
// workloads' pids group (a workload could write the agent's own thread IDs
// into it: the host opened it, so the kernel allows it), and whatever the
// daemon inherited. A process the agent execs must get its stdio and
// nothing else.
func TestExecInheritsNoAgentFiles(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "inherited")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// As a descriptor received from a parent: no close-on-exec.
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fx := start(t, nil)
	out, _, st := run(t, fx.c, agentapi.ExecSpec{Argv: []string{"ls", "/proc/self/fd"}}, nil)
	if st.Code != 0 {
		t.Fatalf("ls: %+v", st)
	}
	for _, n := range strings.Fields(out) {
		if k, err := strconv.Atoi(n); err == nil && k > 3 {
			t.Errorf("the exec'd process holds descriptor %d (want only 0-2 and ls's own 3); the agent's fd %d is inherited", k, fd)
		}
	}
}
