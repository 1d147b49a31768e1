package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// MaxJSONBody is the largest JSON request body accepted, in bytes.
const MaxJSONBody = 1 << 20

// decodeJSON decodes one JSON value from r into v, refusing unknown
// fields, trailing data and bodies over the caller's MaxBytesReader limit.
func decodeJSON(r io.Reader, v any) *api.Error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	// Anything but whitespace after the value is an error.
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			if e := jsonError(err); e.Code == api.CodeBodyTooLarge {
				return e
			}
		}
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeMalformedJSON, Message: "trailing data after the JSON value"}
	}
	return nil
}

func jsonError(err error) *api.Error {
	var (
		mbe  *http.MaxBytesError
		se   *json.SyntaxError
		ute  *json.UnmarshalTypeError
		bad  = http.StatusBadRequest
		text = err.Error()
	)
	switch {
	case errors.As(err, &mbe):
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeBodyTooLarge, Message: fmt.Sprintf("request body over the limit of %d bytes", mbe.Limit)}
	case errors.Is(err, io.EOF):
		return &api.Error{Status: bad, Code: api.CodeMalformedJSON, Message: "empty body: want a JSON object"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &api.Error{Status: bad, Code: api.CodeMalformedJSON, Message: "truncated JSON"}
	case errors.As(err, &se):
		return &api.Error{Status: bad, Code: api.CodeMalformedJSON, Message: fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)}
	case errors.As(err, &ute):
		field := ute.Field
		if field == "" {
			return &api.Error{Status: bad, Code: api.CodeMalformedJSON, Message: fmt.Sprintf("want a JSON %s, got %s", ute.Type, ute.Value)}
		}
		return &api.Error{Status: bad, Code: api.CodeInvalidField, Field: field, Message: fmt.Sprintf("%s: want %s, got %s", field, ute.Type, ute.Value)}
	case strings.HasPrefix(text, "json: unknown field "):
		f, _ := strconv.Unquote(strings.TrimPrefix(text, "json: unknown field "))
		return &api.Error{Status: bad, Code: api.CodeUnknownField, Field: f, Message: fmt.Sprintf("unknown field %q", f)}
	}
	return &api.Error{Status: bad, Code: api.CodeMalformedJSON, Message: "malformed JSON: " + text}
}

// specFields maps the field names in sandbox and daemon validation
// errors to the request's JSON field names.
var specFields = map[string]string{
	"name": "id", "command": "argv", "memory": "resources.memory_bytes", "pids": "resources.pids",
	"cpus": "resources.cpus", "nofile": "resources.nofile", "file size": "resources.file_size_bytes",
	"mount": "mounts", "agent token": "", "resize": "resize", "mode": "mode",
}

// invalid turns a validation error (wrapping sandbox.ErrInvalid, whose
// message names the field first) into a 400 naming the JSON field.
func invalid(err error) *api.Error {
	msg := strings.TrimPrefix(err.Error(), sandbox.ErrInvalid.Error()+": ")
	field := ""
	if i := strings.Index(msg, ": "); i > 0 {
		field = msg[:i]
		if _, known := specFields[field]; !known {
			if j := strings.IndexByte(field, ' '); j > 0 {
				field = field[:j] // `user "alice": ...`
			}
		}
		if f, ok := specFields[field]; ok {
			field = f
		}
	}
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: field, Message: msg}
}

func fieldErr(field, format string, args ...any) *api.Error {
	return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}

func parseDuration(field, s string) (time.Duration, *api.Error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fieldErr(field, "%q is not a duration like 30s or 10m", s)
	}
	if d < 0 {
		return 0, fieldErr(field, "%s is negative", s)
	}
	return d, nil
}

// CreateOptions turns a create request into the manager's options and
// validates them completely (the daemon's pool configuration uses it).
func CreateOptions(req *api.CreateRequest) (daemon.CreateOptions, error) {
	o, e := createOptions(req)
	if e != nil {
		return o, e
	}
	return o, nil
}

// createOptions turns a create request into the manager's options and
// validates them completely.
func createOptions(req *api.CreateRequest) (daemon.CreateOptions, *api.Error) {
	o := daemon.CreateOptions{ID: req.ID, Backend: req.Backend, Labels: req.Labels, NoPool: req.Pool != nil && !*req.Pool}
	var err error
	if o.Spec.User, err = sandbox.ParseUser(req.User); err != nil {
		return o, invalid(err)
	}
	o.Spec.Env = req.Env
	o.Spec.Workdir, o.Spec.Rootfs = req.Workdir, req.Rootfs
	for _, m := range req.Mounts {
		o.Spec.Mounts = append(o.Spec.Mounts, sandbox.Mount{Source: m.Source, Target: m.Target, Writable: m.Writable})
	}
	o.Spec.Resources = sandbox.DefaultResources
	if r := req.Resources; r != nil {
		if r.MemoryBytes != nil {
			o.Spec.Resources.MemoryBytes = *r.MemoryBytes
		}
		if r.Pids != nil {
			o.Spec.Resources.Pids = *r.Pids
		}
		if r.CPUs != nil {
			o.Spec.Resources.CPUs = *r.CPUs
		}
		if r.NoFile != nil {
			o.Spec.Resources.NoFile = *r.NoFile
		}
		if r.FileSizeBytes != nil {
			o.Spec.Resources.FileSize = *r.FileSizeBytes
		}
	}
	if req.Network != nil {
		o.Spec.Network.Allow = req.Network.Allow
		for i, a := range req.Network.Allow {
			if a == "" || strings.IndexByte(a, 0) >= 0 || len(a) > 1024 {
				return o, fieldErr(fmt.Sprintf("network.allow[%d]", i), "empty, too long, or contains NUL")
			}
		}
		if _, err := firewall.ParsePolicy(req.Network.Allow); err != nil {
			return o, &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: "network.allow", Message: err.Error()}
		}
	}
	if req.Seccomp != nil {
		o.Spec.Seccomp = sandbox.Seccomp{Profile: req.Seccomp.Profile, Audit: req.Seccomp.Audit}
	}
	var e *api.Error
	if o.TTL, e = parseDuration("ttl", req.TTL); e != nil {
		return o, e
	}
	if o.IdleTimeout, e = parseDuration("idle_timeout", req.IdleTimeout); e != nil {
		return o, e
	}
	if err := o.Validate(); err != nil {
		return o, invalid(err)
	}
	return o, nil
}

// execOptions turns an exec request into the manager's options.
func execOptions(req *api.ExecRequest) (daemon.ExecOptions, *api.Error) {
	o := daemon.ExecOptions{Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User, TTY: req.TTY, Rows: req.Rows,
		Cols: req.Cols, DestroyAfter: req.DestroyAfter}
	var e *api.Error
	if o.Timeout, e = parseDuration("timeout", req.Timeout); e != nil {
		return o, e
	}
	if err := o.Validate(); err != nil {
		return o, invalid(err)
	}
	return o, nil
}

// checkPath validates a file path parameter.
func checkPath(field, p string) *api.Error {
	if err := daemon.ValidatePath(p); err != nil {
		return fieldErr(field, "%v", err)
	}
	return nil
}

// parseMode reads an octal permission parameter ("0644", "755").
func parseMode(s string) (uint32, *api.Error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fieldErr("mode", "%q is not an octal permission like 0644", s)
	}
	return uint32(v), nil
}

// parseLabels reads label selectors "k=v" (repeated query parameter).
func parseLabels(sel []string) (map[string]string, *api.Error) {
	out := map[string]string{}
	for _, s := range sel {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fieldErr("label", "%q is not KEY=VALUE", s)
		}
		out[k] = v
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func durString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// toSandbox renders the manager's view of a sandbox.
func toSandbox(i *daemon.Info, now time.Time) api.Sandbox {
	r := i.Spec.Resources
	s := api.Sandbox{
		ID: i.ID, Backend: i.Backend, State: i.State, BackendID: i.BackendID, Key: string(i.Key),
		Hostname: sandbox.Hostname(i.BackendID), Labels: i.Labels, CreatedAt: i.Created.UTC(),
		StartedAt: timePtr(i.Started), ExpiresAt: timePtr(i.ExpiresAt), LastActiveAt: timePtr(i.LastActive),
		TTL: durString(i.TTL), IdleTimeout: durString(i.IdleTimeout), UptimeSeconds: i.Uptime(now).Seconds(),
		FromPool: i.FromPool, User: fmt.Sprintf("%d:%d", i.Spec.User.UID, i.Spec.User.GID),
		EnvNames: []string{}, Workdir: i.Spec.Workdir, Rootfs: i.Spec.Rootfs, Mounts: []api.Mount{},
		Limits: api.Resources{MemoryBytes: ptr(r.MemoryBytes), Pids: ptr(r.Pids), CPUs: ptr(r.CPUs), NoFile: ptr(r.NoFile),
			FileSizeBytes: ptr(r.FileSize)},
		Network: api.Network{Allow: append([]string{}, i.Spec.Network.Allow...)},
		Seccomp: api.Seccomp{Profile: i.Spec.Seccomp.Profile, Audit: i.Spec.Seccomp.Audit},
		InitPID: i.InitPID, ActiveExecs: i.ActiveExecs, Addresses: append([]string{}, i.Addresses...),
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	if s.Seccomp.Profile == "" {
		s.Seccomp.Profile = "default"
	}
	for _, kv := range i.Spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		s.EnvNames = append(s.EnvNames, k)
	}
	sort.Strings(s.EnvNames)
	for _, m := range i.Spec.Mounts {
		s.Mounts = append(s.Mounts, api.Mount{Source: m.Source, Target: m.Target, Writable: m.Writable})
	}
	if i.Usage != nil {
		s.Usage = &api.Usage{MemoryBytes: i.Usage.MemoryBytes, Pids: i.Usage.Pids}
	}
	if i.Exit != nil {
		s.Exit = &api.Exit{Time: i.Exit.Time.UTC(), Reason: i.Exit.Reason, OOMKilled: i.Exit.OOMKilled}
	}
	return s
}

func toEvent(e daemon.Event) api.Event {
	return api.Event{Seq: e.Seq, Time: e.Time.UTC(), Sandbox: e.Sandbox, Type: e.Type, Reason: e.Reason, Step: e.Step,
		Error: e.Detail.Error, PoolID: e.PoolID, Pool: e.Pool, ExecID: e.ExecID, Argv: e.Argv, ExitCode: e.ExitCode, Signal: e.Signal,
		OOMKilled: e.OOMKilled, TimedOut: e.TimedOut, Allow: e.Allow, Duration: e.Duration}
}

func toFileInfo(fi agentapi.FileInfo) api.FileInfo {
	t := "other"
	switch {
	case fi.Mode.IsRegular():
		t = "file"
	case fi.Mode.IsDir():
		t = "dir"
	case fi.Mode&os.ModeSymlink != 0:
		t = "symlink"
	}
	return api.FileInfo{Name: fi.Name, Size: fi.Size, Type: t, Mode: uint32(fi.Mode.Perm()), ModTime: fi.ModTime.UTC(), Link: fi.Link}
}
