//go:build firecracker

package firecracker

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

// TestRealFirecracker boots a real Firecracker. It exists only with the
// build tag firecracker (`go test -tags firecracker`), for hosts that have
// Firecracker and a usable KVM, which this project's CI machine kind lacks;
// built with the tag, it fails rather than skips when its inputs are
// missing. Without the tag the driver is pinned by the contract tests
// against the stand-in.
func TestRealFirecracker(t *testing.T) {
	bin := os.Getenv("IRONCLAW_FIRECRACKER_BIN")
	if bin == "" || os.Getenv(image.KernelDirEnv) == "" {
		t.Fatal("set IRONCLAW_FIRECRACKER_BIN and " + image.KernelDirEnv + " to the Firecracker binary and the guest kernel directory")
	}
	img := vmtest.Image(t)
	dir := t.TempDir()
	ctx := context.Background()
	v, err := Start(ctx, Config{Binary: bin, ID: "vm-real", Image: img, Dir: dir, Token: []byte("real-token")})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var out bytes.Buffer
	if st, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"uname", "-a"}}, agentapi.ExecIO{Stdout: &out}); err != nil || st.Code != 0 {
		t.Fatalf("uname: %+v %v", st, err)
	}
	t.Logf("guest: %s", out.String())
}
