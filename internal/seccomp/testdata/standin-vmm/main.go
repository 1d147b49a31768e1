// Command standin-vmm is a STAND-IN for the Firecracker VMM, used only by
// package seccomp's tests because Firecracker cannot run on this machine.
//
// It accepts Firecracker's command-line flags, refuses --no-seccomp (so a
// test fails if anything ever passes it), reports its own seccomp status
// from /proc, and makes two lists of raw syscalls: "work" calls that
// Firecracker's own per-thread rules allow (with the arguments those rules
// require) and "blocked" calls that no Firecracker thread may make. It
// prints every call with its result as one JSON object on stdout, then
// waits for stdin to close, so the test can inspect /proc/PID while it
// runs. The contract test in package seccomp checks the reported calls
// against the Firecracker rule files, pinning this stand-in to them.
//
// Built as a static binary (CGO_ENABLED=0), it also serves as the "static
// Go binary" workload of the seccomp tests (flag -hello).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Call is one syscall the stand-in made.
type Call struct {
	Role  string    `json:"role"` // "work" or "blocked"
	Name  string    `json:"name"`
	Args  [6]uint64 `json:"args"`
	Errno int       `json:"errno"`
}

// Output is what the stand-in prints.
type Output struct {
	StandIn    string   `json:"standin"`
	Args       []string `json:"args"`
	Seccomp    string   `json:"seccomp"`
	NoNewPrivs string   `json:"no_new_privs"`
	Calls      []Call   `json:"calls"`
}

func main() {
	hello := flag.Bool("hello", false, "print hello and exit (static-binary workload)")
	apiSock := flag.String("api-sock", "", "Firecracker: path of the API socket")
	flag.String("id", "", "Firecracker: microVM id")
	flag.String("seccomp-filter", "", "Firecracker: compiled seccomp filter file")
	noSeccomp := flag.Bool("no-seccomp", false, "Firecracker: disable seccomp (refused by this stand-in)")
	flag.String("config-file", "", "Firecracker: configuration file")
	flag.String("level", "", "Firecracker: log level")
	flag.String("log-path", "", "Firecracker: log path")
	flag.Parse()
	if *hello {
		fmt.Println("hello from a static Go binary")
		return
	}
	if *noSeccomp {
		fmt.Fprintln(os.Stderr, "standin-vmm: --no-seccomp must never be passed")
		os.Exit(3)
	}
	out := Output{StandIn: "firecracker", Args: os.Args[1:]}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin-vmm:", err)
		os.Exit(4)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Seccomp":
			out.Seccomp = strings.TrimSpace(v)
		case "NoNewPrivs":
			out.NoNewPrivs = strings.TrimSpace(v)
		}
	}
	var page [4096]byte
	buf := uint64(uintptr(unsafe.Pointer(&page[0])))
	var futexWord uint32
	fw := uint64(uintptr(unsafe.Pointer(&futexWord)))
	call := func(role, name string, nr uintptr, args ...uint64) uintptr {
		var a [6]uint64
		copy(a[:], args)
		r, _, e := syscall.Syscall6(nr, uintptr(a[0]), uintptr(a[1]), uintptr(a[2]), uintptr(a[3]), uintptr(a[4]), uintptr(a[5]))
		out.Calls = append(out.Calls, Call{Role: role, Name: name, Args: a, Errno: int(e)})
		if e != 0 {
			return ^uintptr(0)
		}
		return r
	}
	// Work: what Firecracker's vmm/api/vcpu threads do, with arguments
	// their rules accept.
	sock := call("work", "socket", unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	call("work", "ioctl", unix.SYS_IOCTL, uint64(sock), 0x5421 /* FIONBIO */, buf)
	call("work", "fcntl", unix.SYS_FCNTL, uint64(sock), unix.F_SETFD, 1)
	efd := call("work", "eventfd2", unix.SYS_EVENTFD2, 0, unix.EFD_NONBLOCK)
	binaryOne := [8]byte{1}
	call("work", "write", unix.SYS_WRITE, uint64(efd), uint64(uintptr(unsafe.Pointer(&binaryOne[0]))), 8)
	call("work", "read", unix.SYS_READ, uint64(efd), buf, 8)
	call("work", "timerfd_create", unix.SYS_TIMERFD_CREATE, unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	mem := call("work", "mmap", unix.SYS_MMAP, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	call("work", "madvise", unix.SYS_MADVISE, uint64(mem), 1<<16, unix.MADV_DONTNEED)
	call("work", "munmap", unix.SYS_MUNMAP, uint64(mem), 1<<16)
	call("work", "futex", unix.SYS_FUTEX, fw, 129 /* FUTEX_WAKE_PRIVATE */, 1)
	call("work", "getrandom", unix.SYS_GETRANDOM, buf, 16, 0)
	call("work", "gettid", unix.SYS_GETTID)
	// Blocked: no Firecracker thread may make these. Arguments make them
	// fail harmlessly (not with EPERM) should a filter let them through.
	call("blocked", "mount", unix.SYS_MOUNT, 0, 0, 0, 0, 0)
	call("blocked", "ptrace", unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, uint64(os.Getpid()), 0, 0)
	call("blocked", "bpf", unix.SYS_BPF, 0xffff, 0, 0)
	call("blocked", "unshare", unix.SYS_UNSHARE, 0xffffffff)
	call("blocked", "setns", unix.SYS_SETNS, ^uint64(0), 0)
	call("blocked", "keyctl", unix.SYS_KEYCTL, 99999, 0, 0, 0, 0)
	call("blocked", "process_vm_readv", unix.SYS_PROCESS_VM_READV, uint64(os.Getpid()), 0, 0, 0, 0, 0)
	if fd := call("blocked", "socket", unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); fd != ^uintptr(0) {
		syscall.Close(int(fd))
	}
	if *apiSock != "" {
		sa := unix.SockaddrUnix{Name: *apiSock}
		if err := unix.Bind(int(sock), &sa); err != nil {
			fmt.Fprintln(os.Stderr, "standin-vmm: bind api socket:", err)
			os.Exit(5)
		}
		if err := unix.Listen(int(sock), 8); err != nil {
			fmt.Fprintln(os.Stderr, "standin-vmm: listen on api socket:", err)
			os.Exit(5)
		}
		defer os.Remove(*apiSock)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(6)
	}
	// Run until the host closes stdin, like a VMM runs until stopped.
	io.Copy(io.Discard, os.Stdin)
}
