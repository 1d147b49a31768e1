package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ironclaw/ironclaw/internal/agent"
	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/firecracker/standin"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

const specPath = "testdata/firecracker-api-v1.16.1.yaml"

const standinEnv = "IRONCLAW_FC_STANDIN" // set: this test binary is the Firecracker stand-in

// TestStandinProcess is not a test: it is the body of the Firecracker
// stand-in process the driver launches in the tests below (through the
// Launch seam), so the driver's process handling runs for real.
func TestStandinProcess(t *testing.T) {
	if os.Getenv(standinEnv) == "" {
		return
	}
	args := flagArgs()
	sock := args["--api-sock"]
	root := os.Getenv(standinEnv + "_ROOT") // set when started by the jailer stand-in
	if root != "" {
		sock = filepath.Join(root, sock)
	}
	spec, err := standin.LoadSpec(specPath)
	if err != nil {
		t.Fatal(err)
	}
	fileRoot := filepath.Join(filepath.Dir(sock), "guest-root")
	_ = os.MkdirAll(fileRoot, 0o755)
	// One agent for the guest's lifetime, as in a real VM: a rekey
	// outlives the connection that made it.
	var (
		mu sync.Mutex
		a  *agent.Server
	)
	srv := &standin.Server{Spec: spec, CrashAt: os.Getenv(standinEnv + "_CRASH_AT"), Root: root,
		Agent: func(ctx context.Context, token []byte, conn io.ReadWriteCloser) {
			mu.Lock()
			if a == nil {
				var err error
				a, err = agent.New(agent.Config{Token: token, FileRoot: fileRoot, Version: "stand-in-guest", Shutdown: func() { os.Exit(0) }})
				if err != nil {
					mu.Unlock()
					conn.Close()
					return
				}
			}
			mu.Unlock()
			_ = a.ServeConn(ctx, conn)
		}}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.ServeHTTP(w, r)
		b, _ := json.Marshal(srv.Log())
		_ = os.WriteFile(filepath.Join(filepath.Dir(sock), "standin-requests.json"), b, 0o600)
	})}
	_ = hs.Serve(l)
}

func flagArgs() map[string]string {
	m := map[string]string{}
	a := os.Args
	for i := range a {
		if strings.HasPrefix(a[i], "--") && i+1 < len(a) {
			m[a[i]] = a[i+1]
		}
	}
	return m
}

// standinLaunch runs this test binary as the stand-in with the driver's argv.
func standinLaunch(crashAt string) func(context.Context, []string) (*exec.Cmd, error) {
	return func(_ context.Context, argv []string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestStandinProcess$", "--"}, argv[1:]...)...)
		cmd.Env = append(os.Environ(), standinEnv+"=1", standinEnv+"_CRASH_AT="+crashAt)
		return cmd, nil
	}
}

// fakeImage is enough for the stand-in: it never boots the kernel.
func fakeImage(t *testing.T) *image.Image {
	d := t.TempDir()
	img := &image.Image{Kernel: filepath.Join(d, "vmlinuz"), Initramfs: filepath.Join(d, "initramfs.cpio"), Rootfs: filepath.Join(d, "rootfs.ext4")}
	var buf bytes.Buffer
	if err := image.WriteInitramfs(&buf, os.Args[0], "", nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{img.Kernel, img.Rootfs} {
		if err := os.WriteFile(f, []byte("stand-in"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(img.Initramfs, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

func readLog(t *testing.T, dir string) []standin.Request {
	b, err := os.ReadFile(filepath.Join(dir, "standin-requests.json"))
	if err != nil {
		t.Fatal(err)
	}
	var l []standin.Request
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestFlowAgainstStandin drives Start → exec → snapshot → Restore (rekey)
// → Close against the Firecracker stand-in, and checks that every request
// validated against the published spec and came in the documented order.
func TestFlowAgainstStandin(t *testing.T) {
	testutil.RequireCommand(t, "mkfs.ext4")
	img := fakeImage(t)
	dir := t.TempDir()
	ctx := context.Background()
	token := []byte("template-token")
	v, err := Start(ctx, Config{ID: "vm-standin", Image: img, Dir: dir, Token: token, RWSizeMiB: 8, Launch: standinLaunch(""), Tap: "ictap0",
		Network: mustNet(t, "eth0,10.0.0.2/30,10.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"echo", "through vsock"}}, agentapi.ExecIO{Stdout: &out})
	if err != nil || st.Code != 0 || out.String() != "through vsock\n" {
		t.Fatalf("exec through the stand-in's vsock: %q %+v %v", out.String(), st, err)
	}
	want := []string{"PUT /logger", "PUT /metrics", "PUT /boot-source", "PUT /drives/rootfs", "PUT /drives/rw", "PUT /machine-config",
		"PUT /network-interfaces/eth0", "PUT /vsock", "PUT /entropy", "PUT /actions"}
	log := readLog(t, dir)
	var got []string
	for _, r := range log {
		if r.Error != "" {
			t.Errorf("request violates the spec: %s %s %s: %s", r.Method, r.Path, r.Body, r.Error)
		}
		got = append(got, r.Method+" "+r.Path)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("boot sequence\n got %v\nwant %v", got, want)
	}
	snap, mem := filepath.Join(dir, "snap"), filepath.Join(dir, "mem")
	if err := v.Snapshot(ctx, snap, mem); err != nil {
		t.Fatal(err)
	}
	for _, r := range readLog(t, dir)[len(log):] {
		if r.Error != "" {
			t.Errorf("snapshot request violates the spec: %s %s: %s", r.Method, r.Path, r.Error)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	// A clone: fresh process, snapshot load with resume, rekeyed token.
	cdir := t.TempDir()
	clone, err := Restore(ctx, Config{ID: "vm-clone", Image: img, Dir: cdir, Token: []byte("clone-token"), Launch: standinLaunch("")}, token, snap, mem)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clone.Agent.Health(ctx); err != nil {
		t.Fatal(err)
	}
	// The template token no longer opens the clone's agent.
	conn, err := agentapi.DialFirecrackerVsock(ctx, filepath.Join(cdir, VsockSocket), AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentapi.Connect(ctx, conn, token); err == nil {
		t.Fatal("the template token still opens a rekeyed clone")
	}
	for _, r := range readLog(t, cdir) {
		if r.Error != "" {
			t.Errorf("restore request violates the spec: %s %s: %s", r.Method, r.Path, r.Error)
		}
	}
	if err := clone.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, cdir} {
		for _, f := range []string{APISocket, VsockSocket, initrdFile, rwFile} {
			if _, err := os.Stat(filepath.Join(d, f)); err == nil {
				t.Errorf("%s left behind in %s", f, d)
			}
		}
	}
}

func mustNet(t *testing.T, s string) *guestNet {
	n, err := parseNet(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCrashMidBoot: a VMM that dies during the boot sequence is reported
// with its stderr, and nothing is left running or on disk.
func TestCrashMidBoot(t *testing.T) {
	testutil.RequireCommand(t, "mkfs.ext4")
	dir := t.TempDir()
	_, err := Start(context.Background(), Config{ID: "vm-crash", Image: fakeImage(t), Dir: dir, Token: []byte("t"), RWSizeMiB: 8, Launch: standinLaunch("/machine-config")})
	if err == nil || !strings.Contains(err.Error(), "exited early") || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("err = %v, want an early-exit error carrying the VMM's stderr", err)
	}
	for _, f := range []string{APISocket, VsockSocket, initrdFile, rwFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// TestSpecRejectsBadRequests proves the contract check can fail: bodies
// that break the spec are refused.
func TestSpecRejectsBadRequests(t *testing.T) {
	spec, err := standin.LoadSpec(specPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	good := []struct{ m, p, b string }{
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
	}
	for _, g := range good {
		if err := spec.Validate(ctx, g.m, g.p, []byte(g.b)); err != nil {
			t.Errorf("valid %s %s refused: %v", g.m, g.p, err)
		}
	}
	bad := []struct{ m, p, b string }{
		{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`},        // below minimum
		{"PUT", "/machine-config", `{"vcpu_count":1}`},                           // missing mem_size_mib
		{"PUT", "/boot-source", `{"kernel_image_path":"/k","bogus":1}`},          // unknown field
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`},                     // cid below 3
		{"PATCH", "/vm", `{"state":"Sleeping"}`},                                 // not in enum
		{"PUT", "/actions", `{"action_type":"Reboot"}`},                          // not in enum
		{"PUT", "/drive/rootfs", `{"drive_id":"rootfs","is_root_device":false}`}, // no such path
		{"POST", "/boot-source", `{"kernel_image_path":"/k"}`},                   // no such method
	}
	for _, b := range bad {
		if err := spec.Validate(ctx, b.m, b.p, []byte(b.b)); err == nil {
			t.Errorf("invalid %s %s %s accepted", b.m, b.p, b.b)
		}
	}
	// Every struct the driver marshals validates as the driver fills it.
	for _, c := range []struct {
		m, p string
		v    any
	}{
		{"PUT", "/boot-source", BootSource{KernelImagePath: "/k", InitrdPath: "/i", BootArgs: "console=ttyS0"}},
		{"PUT", "/drives/rootfs", Drive{DriveID: "rootfs", PathOnHost: "/r", IsReadOnly: true}},
		{"PUT", "/network-interfaces/eth0", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}},
		{"PUT", "/logger", Logger{LogPath: "/l", Level: "Info"}},
		{"PUT", "/metrics", Metrics{MetricsPath: "/m"}},
		{"PUT", "/entropy", EntropyDevice{}},
		{"PUT", "/snapshot/create", SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m", SnapshotType: "Full"}},
		{"PUT", "/snapshot/load", SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "/m"}, ResumeVM: true, VsockOverride: &VsockOverride{UDSPath: "/v"}}},
	} {
		b, _ := json.Marshal(c.v)
		if err := spec.Validate(ctx, c.m, c.p, b); err != nil {
			t.Errorf("driver body for %s %s refused: %v", c.m, c.p, err)
		}
	}
}

// TestJailerArgvAndConfigFile checks the jailer command line and that the
// config file's sections validate against the spec's definitions.
func TestJailerArgvAndConfigFile(t *testing.T) {
	j := &Jailer{ChrootBase: "/srv/jailer", UID: 10001, GID: 10001, CgroupVersion: 2, Cgroups: []string{"cpu.max=50000 100000"}, ResourceLimit: []string{"no-file=1024"}}
	a := strings.Join(j.argv(Config{ID: "vm1", Binary: "/usr/bin/firecracker", NetNS: "/run/netns/ic1"}), " ")
	for _, want := range []string{"--id vm1", "--exec-file /usr/bin/firecracker", "--uid 10001", "--cgroup-version 2", "--netns /run/netns/ic1", "--new-pid-ns", "--resource-limit no-file=1024", "-- --api-sock /firecracker.sock"} {
		if !strings.Contains(a, want) {
			t.Errorf("jailer argv %q lacks %q", a, want)
		}
	}
	if strings.Contains(a, "--no-seccomp") {
		t.Error("--no-seccomp in the jailer argv")
	}
	if err := (&Jailer{ChrootBase: "/x", CgroupVersion: 2}).validate(); err == nil {
		t.Error("uid 0 accepted for a jailed VM")
	}
}

func TestConfigRejectsIDsThatLeaveTheChroot(t *testing.T) {
	for _, id := range []string{"..", ".", "a/b", "a b", "ü", "", strings.Repeat("a", 65), "x.y"} {
		if validID(id) {
			t.Errorf("validID(%q) = true", id)
		}
	}
	for _, id := range []string{"vm-1", "A", strings.Repeat("a", 64)} {
		if !validID(id) {
			t.Errorf("validID(%q) = false", id)
		}
	}
}
