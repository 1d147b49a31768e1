// Package standin is the Firecracker stand-in: an HTTP server on a Unix
// socket that serves Firecracker's published API description
// (firecracker-api-v1.16.1.yaml) for hosts where Firecracker cannot run. It
// is not Firecracker. It validates every request — path, method and JSON
// body, with unknown fields refused as Firecracker refuses them — against
// the spec with kin-openapi, answers as the spec says (204, or 400 with a
// fault_message), records what it got, and after InstanceStart plays the
// guest's side of vsock: it answers "CONNECT <port>" with "OK <port>" and
// serves a real agent (internal/agent) with the token it finds in the
// initramfs the driver configured.
package standin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	yaml "go.yaml.in/yaml/v4"
)

// Spec is the parsed API description with a router over it.
type Spec struct {
	doc    *openapi3.T
	router routers.Router
}

// LoadSpec reads the swagger 2.0 YAML, converts it to OpenAPI 3 and makes
// every object schema closed (additionalProperties: false), matching
// Firecracker's refusal of unknown fields.
func LoadSpec(path string) (*Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load firecracker spec: %w", err)
	}
	var y any
	if err := yaml.Unmarshal(raw, &y); err != nil {
		return nil, fmt.Errorf("load firecracker spec: %w", err)
	}
	j, err := json.Marshal(jsonable(y))
	if err != nil {
		return nil, fmt.Errorf("load firecracker spec: %w", err)
	}
	var doc2 openapi2.T
	if err := json.Unmarshal(j, &doc2); err != nil {
		return nil, fmt.Errorf("load firecracker spec: %w", err)
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("load firecracker spec: convert to OpenAPI 3: %w", err)
	}
	closed := false
	for _, s := range doc.Components.Schemas {
		if s.Value != nil && s.Value.Type.Is("object") && s.Value.AdditionalProperties.Schema == nil {
			s.Value.AdditionalProperties.Has = &closed
		}
	}
	doc.Servers = openapi3.Servers{{URL: "http://localhost/"}}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("load firecracker spec: %w", err)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("load firecracker spec: router: %w", err)
	}
	return &Spec{doc: doc, router: r}, nil
}

// jsonable turns YAML's map[any]any (integer response codes) into JSON
// objects.
func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = jsonable(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = jsonable(e)
		}
	}
	return v
}

// Validate checks one request against the spec: a known path and method
// and a body that matches the operation's schema.
func (s *Spec) Validate(ctx context.Context, method, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{MultiError: true}}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

// Request is one recorded API call.
type Request struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"` // the validation failure, if any
}

// Server is the stand-in's API server.
type Server struct {
	Spec *Spec
	// CrashAt makes the process exit with status 3 when this action or
	// path is requested (to test early-exit detection).
	CrashAt string
	// Agent serves the guest side once the VM "runs"; it gets the token
	// found in the initramfs and a connection from the vsock socket.
	Agent func(ctx context.Context, token []byte, conn io.ReadWriteCloser)
	// Root, when set, is the jailer's chroot: paths in requests are
	// inside it, as they are for a jailed Firecracker.
	Root string

	mu       sync.Mutex
	log      []Request
	cfg      map[string]json.RawMessage
	running  bool
	paused   bool
	token    []byte
	ctx      context.Context
	vsockLis net.Listener
}

// Log returns the recorded requests.
func (s *Server) Log() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// ServeHTTP validates, records and answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if len(body) == 0 {
		body = nil
	}
	rec := Request{Method: r.Method, Path: r.URL.Path, Body: body}
	verr := s.Spec.Validate(r.Context(), r.Method, r.URL.Path, body)
	if verr != nil {
		rec.Error = verr.Error()
	}
	s.mu.Lock()
	s.log = append(s.log, rec)
	s.mu.Unlock()
	if s.CrashAt != "" && (r.URL.Path == s.CrashAt || strings.Contains(string(body), `"`+s.CrashAt+`"`)) {
		fmt.Fprintf(os.Stderr, "firecracker stand-in: simulated crash at %s\n", s.CrashAt)
		os.Exit(3)
	}
	if verr != nil {
		fault(w, http.StatusBadRequest, verr.Error())
		return
	}
	if err := s.apply(r.Method, r.URL.Path, body); err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/version" {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"firecracker_version": "1.16.1 (stand-in)"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func fault(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

// apply keeps the little state the flow needs, refusing out-of-order calls
// as Firecracker does (pre-boot only, post-boot only).
func (s *Server) apply(method, path string, body []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg == nil {
		s.cfg = map[string]json.RawMessage{}
	}
	preBoot := strings.HasPrefix(path, "/boot-source") || strings.HasPrefix(path, "/drives/") || path == "/machine-config" ||
		strings.HasPrefix(path, "/network-interfaces/") || path == "/vsock" || path == "/entropy"
	switch {
	case preBoot && method == http.MethodPut:
		if s.running {
			return fmt.Errorf("the update operation is not allowed after boot")
		}
		s.cfg[path] = body
	case path == "/actions":
		var a struct {
			ActionType string `json:"action_type"`
		}
		_ = json.Unmarshal(body, &a)
		if a.ActionType == "InstanceStart" {
			if s.running {
				return errors.New("the VM is already running")
			}
			for _, need := range []string{"/boot-source", "/machine-config"} {
				if _, ok := s.cfg[need]; !ok && need == "/boot-source" {
					return fmt.Errorf("cannot start: %s not configured", need)
				}
			}
			if err := s.boot(); err != nil {
				return err
			}
		}
	case path == "/vm" && method == http.MethodPatch:
		if !s.running {
			return errors.New("the VM is not running")
		}
		var st struct {
			State string `json:"state"`
		}
		_ = json.Unmarshal(body, &st)
		s.paused = st.State == "Paused"
	case path == "/snapshot/create":
		if !s.paused {
			return errors.New("the VM must be paused to snapshot")
		}
		var p struct {
			SnapshotPath string `json:"snapshot_path"`
			MemFilePath  string `json:"mem_file_path"`
		}
		_ = json.Unmarshal(body, &p)
		state, _ := json.Marshal(map[string]any{"stand_in": true, "token": string(s.token)})
		if err := os.WriteFile(s.path(p.SnapshotPath), state, 0o600); err != nil {
			return err
		}
		return os.WriteFile(s.path(p.MemFilePath), []byte("stand-in memory"), 0o600)
	case path == "/snapshot/load":
		if s.running || len(s.cfg) > 0 {
			return errors.New("snapshot load is only allowed on a fresh process")
		}
		var p struct {
			SnapshotPath  string `json:"snapshot_path"`
			ResumeVM      bool   `json:"resume_vm"`
			VsockOverride *struct {
				UDSPath string `json:"uds_path"`
			} `json:"vsock_override"`
		}
		_ = json.Unmarshal(body, &p)
		b, err := os.ReadFile(s.path(p.SnapshotPath))
		if err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
		var st struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal(b, &st); err != nil || st.Token == "" {
			return fmt.Errorf("load snapshot: not a stand-in snapshot")
		}
		s.token = []byte(st.Token)
		if p.VsockOverride == nil {
			return errors.New("load snapshot: the stand-in needs vsock_override")
		}
		vs, _ := json.Marshal(map[string]any{"guest_cid": 3, "uds_path": p.VsockOverride.UDSPath})
		s.cfg["/vsock"] = vs
		if p.ResumeVM {
			return s.listenVsock()
		}
	}
	return nil
}

// path maps a path from a request to the host (inside Root, if set).
func (s *Server) path(p string) string {
	if s.Root == "" {
		return p
	}
	return filepath.Join(s.Root, filepath.Clean("/"+p))
}

// boot "starts the guest": it reads the agent token from the configured
// initramfs and listens on the vsock socket.
func (s *Server) boot() error {
	var bs struct {
		InitrdPath string `json:"initrd_path"`
	}
	_ = json.Unmarshal(s.cfg["/boot-source"], &bs)
	tok, err := TokenFromInitramfs(s.path(bs.InitrdPath))
	if err != nil {
		return fmt.Errorf("stand-in guest: %w", err)
	}
	s.token = tok
	return s.listenVsock()
}

func (s *Server) listenVsock() error {
	var vs struct {
		UDSPath string `json:"uds_path"`
	}
	if err := json.Unmarshal(s.cfg["/vsock"], &vs); err != nil || vs.UDSPath == "" {
		return errors.New("stand-in guest: no vsock configured")
	}
	l, err := net.Listen("unix", s.path(vs.UDSPath))
	if err != nil {
		return err
	}
	s.vsockLis = l
	s.running = true
	token := s.token
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.vsockConn(c, token)
		}
	}()
	return nil
}

// vsockConn answers the host-initiated handshake and hands the connection
// to the agent.
func (s *Server) vsockConn(c net.Conn, token []byte) {
	var line []byte
	one := make([]byte, 1)
	for len(line) < 64 {
		if _, err := c.Read(one); err != nil {
			c.Close()
			return
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	port, ok := strings.CutPrefix(string(line), "CONNECT ")
	if _, err := strconv.ParseUint(port, 10, 32); !ok || err != nil {
		c.Close()
		return
	}
	if _, err := c.Write([]byte("OK " + port + "\n")); err != nil {
		c.Close()
		return
	}
	s.mu.Lock()
	tok := s.token
	s.mu.Unlock()
	if s.Agent != nil {
		s.Agent(context.Background(), tok, c)
	} else {
		c.Close()
	}
}

// TokenFromInitramfs finds /ironclaw/token in a (possibly concatenated)
// cpio newc initramfs.
func TokenFromInitramfs(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	off := 0
	for off+110 <= len(b) {
		if string(b[off:off+6]) != "070701" {
			if b[off] == 0 {
				off++ // padding between archives
				continue
			}
			return nil, fmt.Errorf("initramfs %s: bad cpio magic at %d", path, off)
		}
		hex := func(i int) int {
			v, _ := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			return int(v)
		}
		size, nameSize := hex(6), hex(11)
		nameStart := off + 110
		if nameStart+nameSize > len(b) {
			break
		}
		name := strings.TrimRight(string(b[nameStart:nameStart+nameSize]), "\x00")
		dataStart := (nameStart + nameSize + 3) &^ 3
		if dataStart+size > len(b) {
			break
		}
		if name == "ironclaw/token" {
			return bytes.TrimSpace(b[dataStart : dataStart+size]), nil
		}
		off = (dataStart + size + 3) &^ 3
	}
	return nil, fmt.Errorf("initramfs %s: no ironclaw/token", path)
}
