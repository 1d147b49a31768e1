package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// DefaultMaxFileSize is the upload/download limit when Config leaves it 0.
const DefaultMaxFileSize = 1 << 30

// DefaultMaxExecs bounds concurrently running execs when Config leaves it 0.
const DefaultMaxExecs = 256

// Config configures a Server.
type Config struct {
	// Token is the per-sandbox secret every connection must present.
	// Required. It is never logged.
	Token []byte
	// FileRoot is the directory file operations are confined to; "" means "/".
	FileRoot string
	// MaxFileSize caps uploads and downloads in bytes; 0 means DefaultMaxFileSize.
	MaxFileSize int64
	// FileOwner, when set, owns the files and directories uploads and
	// mkdir create (a jail's agent runs as the sandbox's root; its files
	// belong to the sandbox's user). Nil keeps the agent's own uid.
	FileOwner *FileOwner
	// MaxExecs caps concurrently running execs; 0 means DefaultMaxExecs.
	MaxExecs int
	// Launch starts a fully prepared command (path, argv, env, dir,
	// credentials, stdio as *os.File, SysProcAttr). It may rewrite cmd —
	// wrap it in a hardening helper, add SysProcAttr fields — but must
	// keep its stdio. Nil means cmd.Start. The Server never calls
	// cmd.Wait: it waits for the process itself (see Reaper).
	Launch func(ctx context.Context, cmd *exec.Cmd) error
	// Reaper, when set, is the process-wide child reaper (an init must
	// reap every orphan); the Server registers its children with it.
	// Nil means the Server waits for each child with os.Process.Wait.
	Reaper *Reaper
	// Shutdown is called after a shutdown request has been acknowledged.
	// Nil makes the agent refuse shutdown requests.
	Shutdown func()
	// Version is the agent build's version string, reported by health.
	Version string
	Logger  *slog.Logger
}

// FileOwner is a uid and gid that created files are given.
type FileOwner struct{ UID, GID uint32 }

// Server serves the agent protocol. Create it with New.
type Server struct {
	cfg     Config
	log     *slog.Logger
	root    *os.File
	started time.Time

	mu       sync.Mutex
	token    []byte
	execs    map[string]*execProc
	reserved int // execs started or starting, bounded by MaxExecs
}

// New validates cfg and opens the file root.
func New(cfg Config) (*Server, error) {
	if len(cfg.Token) == 0 {
		return nil, fmt.Errorf("agent config: token: must not be empty")
	}
	if cfg.FileRoot == "" {
		cfg.FileRoot = "/"
	}
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.MaxExecs <= 0 {
		cfg.MaxExecs = DefaultMaxExecs
	}
	if cfg.Launch == nil {
		cfg.Launch = func(_ context.Context, cmd *exec.Cmd) error { return cmd.Start() }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fd, err := unix.Open(cfg.FileRoot, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("agent config: file root %s: %w", cfg.FileRoot, err)
	}
	return &Server{
		cfg:     cfg,
		log:     log,
		root:    os.NewFile(uintptr(fd), cfg.FileRoot),
		started: time.Now(),
		token:   append([]byte(nil), cfg.Token...),
		execs:   map[string]*execProc{},
	}, nil
}

// Close kills every running exec and releases the file root.
func (s *Server) Close() error {
	s.mu.Lock()
	for _, p := range s.execs {
		p.kill()
	}
	s.mu.Unlock()
	return s.root.Close()
}

func (s *Server) currentToken() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

// Serve accepts connections on l and serves each until ctx ends or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	go func() {
		<-ctx.Done()
		_ = l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.log.Warn("agent connection ended", "err", err)
			}
		}()
	}
}

// ServeConn authenticates conn and serves its streams until the session ends
// or ctx is done. It closes conn. Execs started on this connection are killed
// when it ends: a host that lost its connection cannot see their output.
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := agentapi.ServerHandshake(hctx, conn, s.currentToken)
	cancel()
	if err != nil {
		_ = conn.Close()
		return err
	}
	sess, err := yamux.Server(conn, agentapi.MuxConfig())
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("agent session: %w", err)
	}
	sctx, cancelSess := context.WithCancel(ctx)
	defer cancelSess()
	go func() {
		select {
		case <-sctx.Done():
		case <-sess.CloseChan():
		}
		_ = sess.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			cancelSess()
			if sess.IsClosed() || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("agent session: accept stream: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			s.handleStream(sctx, st)
		}()
	}
}

func (s *Server) handleStream(ctx context.Context, st *yamux.Stream) {
	f, err := agentapi.ReadFrame(st, agentapi.MaxFrame)
	if err != nil {
		s.log.Debug("agent stream: read request", "err", err)
		return
	}
	var req agentapi.Request
	if err := agentapi.DecodeJSON(f, agentapi.FrameRequest, &req); err != nil {
		s.reply(st, errResponse(agentapi.CodeInvalid, err))
		return
	}
	switch req.Op {
	case agentapi.OpHealth:
		s.reply(st, agentapi.Response{Health: s.health()})
	case agentapi.OpExec:
		if req.Exec == nil {
			s.reply(st, invalid("exec: missing exec spec"))
			return
		}
		s.handleExec(ctx, st, *req.Exec)
	case agentapi.OpSignal:
		s.reply(st, s.signal(req.Signal))
	case agentapi.OpResize:
		s.reply(st, s.resize(req.Resize))
	case agentapi.OpStat, agentapi.OpList, agentapi.OpMkdir, agentapi.OpRemove:
		if req.File == nil {
			s.reply(st, invalid(string(req.Op)+": missing file spec"))
			return
		}
		s.reply(st, s.fileOp(req.Op, *req.File))
	case agentapi.OpWrite:
		if req.File == nil {
			s.reply(st, invalid("write: missing file spec"))
			return
		}
		s.handleWrite(st, *req.File)
	case agentapi.OpRead:
		if req.File == nil {
			s.reply(st, invalid("read: missing file spec"))
			return
		}
		s.handleRead(st, *req.File)
	case agentapi.OpRekey:
		s.reply(st, s.rekey(req.Rekey))
	case agentapi.OpShutdown:
		if s.cfg.Shutdown == nil {
			s.reply(st, errResponse(agentapi.CodeInvalid, errors.New("shutdown: not supported by this agent")))
			return
		}
		s.reply(st, agentapi.Response{})
		s.log.Info("agent shutting down on request")
		go s.cfg.Shutdown()
	default:
		s.reply(st, invalid(fmt.Sprintf("unknown op %q", req.Op)))
	}
}

func (s *Server) reply(w io.Writer, r agentapi.Response) {
	if err := agentapi.WriteJSON(w, agentapi.FrameResponse, r); err != nil {
		s.log.Debug("agent stream: write response", "err", err)
	}
}

func (s *Server) health() *agentapi.Health {
	var uts unix.Utsname
	kernel := ""
	if unix.Uname(&uts) == nil {
		kernel = unix.ByteSliceToString(uts.Release[:])
	}
	s.mu.Lock()
	n := len(s.execs)
	s.mu.Unlock()
	return &agentapi.Health{
		Version:      agentapi.Version,
		AgentVersion: s.cfg.Version,
		PID:          os.Getpid(),
		Uptime:       time.Since(s.started).Round(time.Millisecond).String(),
		Kernel:       kernel,
		Execs:        n,
	}
}

func (s *Server) rekey(r *agentapi.RekeySpec) agentapi.Response {
	if r == nil || r.Token == "" {
		return invalid("rekey: token: must not be empty")
	}
	if len(r.Entropy) > 0 {
		f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
		if err != nil {
			return errResponse(agentapi.CodeInternal, fmt.Errorf("rekey: add entropy: %w", err))
		}
		_, err = f.Write(r.Entropy)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return errResponse(agentapi.CodeInternal, fmt.Errorf("rekey: add entropy: %w", err))
		}
	}
	s.mu.Lock()
	s.token = []byte(r.Token)
	s.mu.Unlock()
	s.log.Info("agent token replaced")
	return agentapi.Response{}
}

func invalid(msg string) agentapi.Response {
	return agentapi.Response{Code: agentapi.CodeInvalid, Error: msg}
}

func errResponse(code string, err error) agentapi.Response {
	return agentapi.Response{Code: code, Error: err.Error()}
}

// errCode classifies an errno from a file operation.
func errCode(err error) string {
	switch {
	case errors.Is(err, unix.ENOENT):
		return agentapi.CodeNotFound
	case errors.Is(err, unix.EXDEV):
		return agentapi.CodeEscape
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTEMPTY):
		return agentapi.CodeExists
	case errors.Is(err, unix.EFBIG), errors.Is(err, agentapi.ErrTooLarge):
		return agentapi.CodeTooLarge
	case errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EISDIR), errors.Is(err, unix.EINVAL),
		errors.Is(err, unix.ELOOP), errors.Is(err, errInvalidPath):
		return agentapi.CodeInvalid
	}
	return agentapi.CodeInternal
}
