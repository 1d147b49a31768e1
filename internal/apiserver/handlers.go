package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/firewall"
)

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{Status: "ok", Sandboxes: len(s.m.List(r.Context(), nil))})
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) { s.prom.ServeHTTP(w, r) }

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(api.OpenAPI)
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var req api.CreateRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	o, e := createOptions(&req)
	if e != nil {
		writeError(w, e)
		return
	}
	info, err := s.m.Create(r.Context(), o)
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+url.PathEscape(info.ID))
	writeJSON(w, http.StatusCreated, toSandbox(info, time.Now()))
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	sel, e := parseLabels(r.URL.Query()["label"])
	if e != nil {
		writeError(w, e)
		return
	}
	now := time.Now()
	out := api.SandboxList{Sandboxes: []api.Sandbox{}}
	for _, i := range s.m.List(r.Context(), sel) {
		out.Sandboxes = append(out.Sandboxes, toSandbox(&i, now))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	info, err := s.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(info, time.Now()))
}

func (s *Server) destroy(w http.ResponseWriter, r *http.Request) {
	if err := s.m.Destroy(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) updateNetwork(w http.ResponseWriter, r *http.Request) {
	var req api.NetworkUpdate
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if req.Allow == nil {
		writeError(w, fieldErr("allow", "required (an empty list means loopback only)"))
		return
	}
	for i, a := range req.Allow {
		if a == "" || strings.IndexByte(a, 0) >= 0 || len(a) > 1024 {
			writeError(w, fieldErr(fmt.Sprintf("allow[%d]", i), "empty, too long, or contains NUL"))
			return
		}
	}
	if _, err := firewall.ParsePolicy(req.Allow); err != nil {
		writeError(w, &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: "allow", Message: err.Error()})
		return
	}
	info, err := s.m.UpdateNetwork(r.Context(), r.PathValue("id"), req.Allow)
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(info, time.Now()))
}

// pathParam returns the validated "path" query parameter.
func pathParam(r *http.Request) (string, *api.Error) {
	p := r.URL.Query().Get("path")
	return p, checkPath("path", p)
}

func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	p, e := pathParam(r)
	if e != nil {
		writeError(w, e)
		return
	}
	id := r.PathValue("id")
	fi, err := s.m.Stat(r.Context(), id, p)
	if err != nil {
		writeError(w, errorFor(err, "path"))
		return
	}
	if !fi.Mode.IsRegular() {
		writeError(w, fieldErr("path", "%s is not a regular file", p))
		return
	}
	if fi.Size > s.m.MaxFileSize() {
		writeError(w, &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeFileTooLarge, Field: "path",
			Message: fmt.Sprintf("%s is %d bytes, over the limit of %d", p, fi.Size, s.m.MaxFileSize())})
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
	cw := &countWriter{w: w}
	if _, err := s.m.ReadFile(r.Context(), id, p, cw, fi.Size); err != nil {
		if cw.n == 0 && !cw.started {
			w.Header().Del("Content-Length")
			writeError(w, errorFor(err, "path"))
			return
		}
		// Mid-body: end the connection so the client sees a short body.
		s.log.Warn("download broke off", "sandbox", id, "err", err)
		panic(http.ErrAbortHandler)
	}
}

type countWriter struct {
	w       io.Writer
	n       int64
	started bool
}

func (c *countWriter) Write(b []byte) (int, error) {
	c.started = true
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	p, e := pathParam(r)
	if e != nil {
		writeError(w, e)
		return
	}
	mode, e := parseMode(r.URL.Query().Get("mode"))
	if e != nil {
		writeError(w, e)
		return
	}
	max := s.m.MaxFileSize()
	if r.ContentLength > max {
		writeError(w, &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeFileTooLarge,
			Message: fmt.Sprintf("upload of %d bytes over the limit of %d", r.ContentLength, max)})
		return
	}
	n, err := s.m.WriteFile(r.Context(), r.PathValue("id"), p, http.MaxBytesReader(w, r.Body, max), mode, max)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeFileTooLarge,
				Message: fmt.Sprintf("upload over the limit of %d bytes", max)})
			return
		}
		writeError(w, errorFor(err, "path"))
		return
	}
	writeJSON(w, http.StatusOK, api.Written{Path: p, Bytes: n})
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) {
	p, e := pathParam(r)
	if e != nil {
		writeError(w, e)
		return
	}
	rec, e := boolParam(r, "recursive")
	if e != nil {
		writeError(w, e)
		return
	}
	if err := s.m.Remove(r.Context(), r.PathValue("id"), p, rec); err != nil {
		writeError(w, errorFor(err, "path"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func boolParam(r *http.Request, name string) (bool, *api.Error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fieldErr(name, "%q is not true or false", v)
	}
	return b, nil
}

func (s *Server) stat(w http.ResponseWriter, r *http.Request) {
	p, e := pathParam(r)
	if e != nil {
		writeError(w, e)
		return
	}
	fi, err := s.m.Stat(r.Context(), r.PathValue("id"), p)
	if err != nil {
		writeError(w, errorFor(err, "path"))
		return
	}
	writeJSON(w, http.StatusOK, toFileInfo(*fi))
}

func (s *Server) listDir(w http.ResponseWriter, r *http.Request) {
	p, e := pathParam(r)
	if e != nil {
		writeError(w, e)
		return
	}
	l, err := s.m.ListDir(r.Context(), r.PathValue("id"), p)
	if err != nil {
		writeError(w, errorFor(err, "path"))
		return
	}
	out := api.FileList{Entries: make([]api.FileInfo, 0, len(l))}
	for _, fi := range l {
		out.Entries = append(out.Entries, toFileInfo(fi))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) mkdir(w http.ResponseWriter, r *http.Request) {
	var req api.MkdirRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if e := checkPath("path", req.Path); e != nil {
		writeError(w, e)
		return
	}
	if req.Mode > 0o7777 {
		writeError(w, fieldErr("mode", "%o has bits beyond 07777", req.Mode))
		return
	}
	if err := s.m.Mkdir(r.Context(), r.PathValue("id"), req.Path, req.Mode, req.Parents); err != nil {
		writeError(w, errorFor(err, "path"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// intParam reads a non-negative integer query parameter.
func intParam(r *http.Request, name string, def int64) (int64, *api.Error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fieldErr(name, "%q is not a non-negative integer", v)
	}
	return n, nil
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	limit, e := intParam(r, "limit", 1000)
	if e != nil {
		writeError(w, e)
		return
	}
	if limit == 0 || limit > 10000 {
		writeError(w, fieldErr("limit", "%d is not within 1..10000", limit))
		return
	}
	evs, err := s.m.Logs(r.Context(), r.PathValue("id"), int(limit))
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	out := api.EventList{Entries: make([]api.Event, 0, len(evs))}
	for _, ev := range evs {
		out.Entries = append(out.Entries, toEvent(ev))
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams events as NDJSON: stored ones after ?since= first (when
// given), then live ones, until the client goes away.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sandboxID := q.Get("sandbox")
	types := map[string]bool{}
	for _, t := range q["type"] {
		for _, x := range strings.Split(t, ",") {
			if x != "" {
				types[x] = true
			}
		}
	}
	since := int64(-1)
	if q.Has("since") {
		n, e := intParam(r, "since", 0)
		if e != nil {
			writeError(w, e)
			return
		}
		since = n
	}
	sub := s.m.Subscribe(sandboxID)
	defer sub.Close()
	var backlog []api.Event
	last := since
	if since >= 0 {
		evs, err := s.m.Events(r.Context(), sandboxID, since, 0)
		if err != nil {
			writeError(w, errorFor(err, ""))
			return
		}
		for _, ev := range evs {
			backlog = append(backlog, toEvent(ev))
		}
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(ev api.Event) bool {
		if ev.Seq <= last || (len(types) > 0 && !types[ev.Type]) {
			return true
		}
		last = ev.Seq
		return enc.Encode(ev) == nil
	}
	for _, ev := range backlog {
		if !send(ev) {
			return
		}
	}
	if err := rc.Flush(); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return // fell behind or shutdown: the client reconnects with since
			}
			if !send(toEvent(ev)) || rc.Flush() != nil {
				return
			}
		}
	}
}
