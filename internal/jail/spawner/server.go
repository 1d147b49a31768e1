package spawner

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// MaybeMain runs the spawner and never returns when this process was
// started as one; otherwise it returns at once. Binaries that may be
// executed as a sandbox's init call it first thing (jail.MaybeInit).
func MaybeMain() {
	if len(os.Args) == 0 || os.Args[0] != Arg0 {
		return
	}
	if err := serve(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Arg0, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// incoming is a received request with its descriptors.
type incoming struct {
	req   request
	files []*os.File
	err   error // a request that could not be decoded
}

// serve answers requests on descriptor sockFD until its peer closes it.
// One goroutine forks and reaps, so a child's exit is always reported
// after the reply that names it.
func serve() error {
	f := os.NewFile(sockFD, "spawner")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		return errors.New("socket: not a Unix socket")
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGCHLD)
	reqs := make(chan incoming)
	go read(conn, reqs)
	for {
		select {
		case in, ok := <-reqs:
			if !ok {
				return nil // the daemon closed its end
			}
			rep, pidfd := start(in)
			err := send(conn, rep, pidfd)
			if pidfd != nil {
				pidfd.Close()
			}
			if err != nil {
				return fmt.Errorf("reply: %w", err)
			}
		case <-sigc:
			if err := reap(conn); err != nil {
				return err
			}
		}
	}
}

// read decodes requests until the socket closes.
func read(conn *net.UnixConn, reqs chan<- incoming) {
	defer close(reqs)
	buf := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(maxFiles*4+8))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		// The request is decoded first, whatever else is wrong with the
		// message, so that the refusal carries its number: the daemon
		// would otherwise wait for an answer forever.
		var in incoming
		derr := decode(buf[:n], &in.req)
		var ferr error
		in.files, ferr = parseRights(oob[:oobn])
		switch {
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			in.err = errors.New("request truncated")
		case ferr != nil:
			in.err = ferr
		case derr != nil:
			in.err = derr
		default:
			in.err = in.req.validate(len(in.files))
		}
		reqs <- in
	}
}

// start starts the process in.req asks for, and closes in's descriptors.
func start(in incoming) (reply, *os.File) {
	defer func() {
		for _, f := range in.files {
			f.Close()
		}
	}()
	rep := reply{Seq: in.req.Seq}
	if in.err != nil {
		rep.Err = in.err.Error()
		return rep, nil
	}
	r := in.req
	files := in.files[:r.Files]
	rest := in.files[r.Files:]
	var netns, cgroup *os.File
	if r.NetNS {
		netns, rest = rest[0], rest[1:]
	}
	if r.CgroupFD {
		cgroup = rest[0]
	}
	pidfd := -1
	attr := &syscall.SysProcAttr{
		Cloneflags:                 r.Cloneflags,
		UidMappings:                r.UidMappings,
		GidMappings:                r.GidMappings,
		GidMappingsEnableSetgroups: r.GidMappingsEnableSetgroups,
		Credential:                 r.Credential,
		Setsid:                     r.Setsid,
		PidFD:                      &pidfd,
	}
	if cgroup != nil {
		attr.UseCgroupFD = true
		attr.CgroupFD = int(cgroup.Fd())
	}
	cmd := &exec.Cmd{
		Path: r.Path, Args: r.Args, Env: r.Env,
		Stdin: files[0], Stdout: files[1], Stderr: files[2],
		ExtraFiles:  files[3:],
		SysProcAttr: attr,
	}
	var err error
	if netns == nil {
		err = cmd.Start()
	} else {
		err = startIn(cmd, netns)
	}
	if err != nil {
		rep.Err = err.Error()
		return rep, nil
	}
	rep.PID = cmd.Process.Pid
	// The child is reaped by reap; the os.Process is not needed.
	_ = cmd.Process.Release()
	return rep, os.NewFile(uintptr(pidfd), "pidfd")
}

// startIn starts cmd from a thread in the network namespace netns, then
// returns the thread to its own namespace and to the runtime. A thread
// that cannot go back stays locked, and the runtime discards it when its
// goroutine ends (or, the main thread, parks it for good: with one P the
// spawner's goroutines often run there).
func startIn(cmd *exec.Cmd, netns *os.File) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace: %w", err)
			return
		}
		err = cmd.Start()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// reap reports every child that has ended.
func reap(conn *net.UnixConn) error {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return nil // none left (ECHILD) or none ended yet
		}
		if err := send(conn, reply{Exit: &exit{PID: pid, Status: uint32(ws)}}, nil); err != nil {
			return fmt.Errorf("report exit: %w", err)
		}
	}
}

// send writes one message, with f in SCM_RIGHTS when not nil.
func send(conn *net.UnixConn, v any, f *os.File) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	_, _, err = conn.WriteMsgUnix(b, oob, nil)
	return err
}

// parseRights returns the descriptors passed in oob, close-on-exec (the
// runtime receives with MSG_CMSG_CLOEXEC).
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	var perr error
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			perr = fmt.Errorf("parse descriptors: %w", err)
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "passed"))
		}
	}
	if perr != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, perr
	}
	return files, nil
}
