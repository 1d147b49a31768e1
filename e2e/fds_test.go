package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestRunPassesNoInheritedDescriptor: whoever starts ironclaw may leave
// descriptors open without close-on-exec (a shell's exec 200>file, an MCP
// client, a CI runner). None may reach the workload: a host file open
// for writing inside the sandbox is a way out of it. The caller here
// leaves a host file open on fds 3 to 102.
func TestRunPassesNoInheritedDescriptor(t *testing.T) {
	testutil.RequireRoot(t)
	host := filepath.Join(t.TempDir(), "host-file")
	f, err := os.Create(host)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--root", root, "run", "--", "ls", "-l", "/proc/self/fd")
	for range 100 {
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("run: %v\n%s", err, errb.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 9 {
			continue
		}
		if fd, err := strconv.Atoi(fs[8]); err == nil && fd > 3 || strings.Contains(line, "host-file") {
			t.Errorf("the workload holds a descriptor it did not open: %s", line)
		}
	}
}
