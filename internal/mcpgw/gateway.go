package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Options configure a Gateway.
type Options struct {
	Config   *Config
	Launcher *Launcher
	// Queue holds red calls; the caller serves it (approval.Serve).
	Queue *approval.Queue
	// Store receives the audit records of every tools/call: one for a
	// call that does not run, a started record and an outcome for one
	// that does. Required: a gateway without an audit log is refused, and
	// a call whose started record cannot be written does not run.
	Store *store.Store
	// Name identifies this gateway in the audit log.
	Name    string
	Version string
	Logger  *slog.Logger
	// Builtins are the gateway's own tools (namespace "ironclaw"), such as
	// sandbox_run; the daemon adds its long-lived sandbox tools here.
	Builtins []Builtin
	// ApprovalTimeout is how long a red call waits unless a policy says
	// otherwise (default approval.DefaultTimeout).
	ApprovalTimeout time.Duration
	// InitTimeout bounds a server's initialize handshake (default 60s).
	InitTimeout time.Duration
	// MinBackoff and MaxBackoff bound restart delays (default 250ms, 30s);
	// a server that stayed up StableAfter (default 1m) restarts at MinBackoff.
	MinBackoff, MaxBackoff, StableAfter time.Duration
	// UnavailableWait is how long a call waits for a restarting server
	// before failing (default 10s).
	UnavailableWait time.Duration
}

// Builtin is one of the gateway's own tools. Its calls are classified,
// held and audited exactly like a server's.
type Builtin struct {
	Tool    *mcp.Tool
	Handler func(ctx context.Context, args json.RawMessage) (*mcp.CallToolResult, error)
	// Policy decides its calls (after the gateway-wide rules).
	Policy approval.Policy
	// Precheck, when set, runs on the parsed arguments before the call is
	// classified: an error refuses the call (audited as blocked) without
	// holding it for a person, as for a sandbox the tool may not touch.
	// The handler must check again: a held call runs later.
	Precheck func(ctx context.Context, args map[string]any) error
	// ReadFor, when set, returns how a held call's card reads the current
	// content of the file the call would write (for the diff), given the
	// call's parsed arguments.
	ReadFor func(args map[string]any) approval.ReadFunc
}

// Gateway aggregates MCP servers behind one MCP server.
type Gateway struct {
	opts   Options
	cfg    *Config
	log    *slog.Logger
	server *mcp.Server
	redact *approval.Redactor

	upstreams map[string]*upstream
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu       sync.Mutex
	progress map[string]progressRoute
	token    atomic.Uint64
}

type progressRoute struct {
	// u is the server the call went to: only its notifications take
	// this route (the tokens are guessable, and another server's
	// progress would speak in this call under this server's name).
	u     *upstream
	ss    *mcp.ServerSession
	token any
	// ctx is the client's call: notifications sent in it travel on that
	// request's stream (streamable HTTP).
	ctx context.Context
}

type downstreamKey struct{}

// New builds a gateway. Start connects the servers.
func New(opts Options) (*Gateway, error) {
	if opts.Config == nil || opts.Launcher == nil || opts.Queue == nil || opts.Logger == nil {
		return nil, errors.New("new gateway: Config, Launcher, Queue and Logger are required")
	}
	if opts.Store == nil {
		return nil, errors.New("new gateway: an audit store is required")
	}
	// A Config not made by ParseConfig holds uncompiled policies: compile
	// them here, so that an invalid one is an error now and a valid one
	// classifies as written.
	if err := opts.Config.Approval.Compile(); err != nil {
		return nil, fmt.Errorf("new gateway: ironclaw.approval: %w", err)
	}
	for _, name := range opts.Config.Names() {
		if opts.Config.Servers[name] == nil {
			return nil, fmt.Errorf("new gateway: server %q: no config", name)
		}
		if err := opts.Config.Servers[name].Approval.Compile(); err != nil {
			return nil, fmt.Errorf("new gateway: server %q: approval: %w", name, err)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.ApprovalTimeout, approval.DefaultTimeout)
	def(&opts.InitTimeout, 60*time.Second)
	def(&opts.MinBackoff, 250*time.Millisecond)
	def(&opts.MaxBackoff, 30*time.Second)
	def(&opts.StableAfter, time.Minute)
	def(&opts.UnavailableWait, 10*time.Second)
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Name == "" {
		opts.Name = "gateway"
	}
	var secrets []string
	for _, s := range opts.Config.Servers {
		secrets = append(secrets, s.SecretValues()...)
	}
	g := &Gateway{
		opts: opts, cfg: opts.Config, log: opts.Logger.With("gateway", opts.Name),
		redact:    approval.NewRedactor(secrets...),
		upstreams: map[string]*upstream{},
		progress:  map[string]progressRoute{},
	}
	g.server = mcp.NewServer(&mcp.Implementation{Name: "ironclaw", Title: "IronClaw MCP gateway", Version: opts.Version}, &mcp.ServerOptions{
		Instructions:       g.instructions(),
		Logger:             g.log,
		CompletionHandler:  g.complete,
		SubscribeHandler:   g.subscribe,
		UnsubscribeHandler: g.unsubscribe,
		Capabilities: &mcp.ServerCapabilities{
			Logging:   &mcp.LoggingCapabilities{},
			Tools:     &mcp.ToolCapabilities{ListChanged: true},
			Prompts:   &mcp.PromptCapabilities{ListChanged: true},
			Resources: &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true},
		},
	})
	g.server.AddReceivingMiddleware(g.auditUnknownTools)
	for _, b := range opts.Builtins {
		if err := g.addBuiltin(b); err != nil {
			return nil, err
		}
	}
	for _, name := range g.cfg.Names() {
		s := g.cfg.Servers[name]
		if s.Disabled {
			continue
		}
		g.upstreams[name] = newUpstream(g, s)
	}
	return g, nil
}

func (g *Gateway) instructions() string {
	var sb strings.Builder
	sb.WriteString("IronClaw gateway. Tools are named server__tool. Calls that may change things can be held for a person's approval.")
	var unsafe []string
	for _, n := range g.cfg.Names() {
		if s := g.cfg.Servers[n]; s.Transport == TransportStdio && s.Sandbox.Backend == BackendNone && !s.Disabled {
			unsafe = append(unsafe, n)
		}
	}
	if len(unsafe) > 0 {
		fmt.Fprintf(&sb, " WARNING: these servers run UNSANDBOXED on the host, as the gateway's uid: %s. They can approve held calls themselves and rewrite the audit log; approvals do not contain them.", strings.Join(unsafe, ", "))
	}
	return sb.String()
}

// Server returns the MCP server clients connect to.
func (g *Gateway) Server() *mcp.Server { return g.server }

// Start starts every server's connect-and-restart loop and waits for each
// first attempt (or ctx). A server that fails to start is reported in the
// returned error but keeps being retried: the gateway serves the others.
func (g *Gateway) Start(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.cancel = cancel
	type res struct {
		name string
		err  error
	}
	results := make(chan res, len(g.upstreams))
	for name, u := range g.upstreams {
		first := make(chan error, 1)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			u.run(runCtx, first)
		}()
		go func() { results <- res{name, <-first} }()
	}
	var errs []string
	for range g.upstreams {
		select {
		case r := <-results:
			if r.err != nil {
				errs = append(errs, g.redact.String(r.err.Error()))
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("start servers: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Close stops every server and waits for them to exit.
func (g *Gateway) Close() error {
	if g.cancel != nil {
		g.cancel()
	}
	g.wg.Wait()
	return nil
}

// Qualify returns the gateway's name for a server's tool or prompt.
func Qualify(server, name string) string { return server + Separator + name }

// sync lists the server's tools, prompts and resources and registers them
// on the gateway server, removing what disappeared.
func (u *upstream) sync(ctx context.Context, cs *mcp.ClientSession) error {
	var errs []error
	caps := cs.InitializeResult().Capabilities
	if caps == nil {
		caps = &mcp.ServerCapabilities{}
	}
	if caps.Logging != nil {
		// Forward everything; each client session filters by its own
		// level. Set before the tools are listed to clients: a server
		// drops what it logs before a level is set, so a call racing
		// this would lose its messages.
		if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
			u.log.Debug("set the server's logging level", "err", err)
		}
	}
	if caps.Tools != nil {
		errs = append(errs, u.syncTools(ctx, cs))
	}
	if caps.Prompts != nil {
		errs = append(errs, u.syncPrompts(ctx, cs))
	}
	if caps.Resources != nil {
		errs = append(errs, u.syncResources(ctx, cs))
	}
	return errors.Join(errs...)
}

// safely runs an SDK registration that panics on malformed input (tool
// schemas, resource URIs): servers are untrusted, and one bad entry must
// not take the gateway down.
func safely(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rejected by the MCP SDK: %v", r)
		}
	}()
	f()
	return nil
}

func (u *upstream) syncTools(ctx context.Context, cs *mcp.ClientSession) error {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	u.pending[listTools].Store(false) // from here on, a change needs another resync
	tools, err := listPages(ctx, "tools", func(ctx context.Context, c string) (*mcp.ListToolsResult, error) {
		return cs.ListTools(ctx, &mcp.ListToolsParams{Cursor: c})
	}, func(r *mcp.ListToolsResult) ([]*mcp.Tool, string) { return r.Tools, r.NextCursor })
	if err != nil {
		return err
	}
	want := map[string]*mcp.Tool{}
	for _, t := range tools {
		if !u.cfg.Tools.Permits(t.Name) {
			u.log.Debug("tool hidden by the tools filter", "tool", t.Name)
			continue
		}
		want[Qualify(u.cfg.Name, t.Name)] = t
	}
	u.mu.Lock()
	var gone []string
	for q := range u.tools {
		if _, ok := want[q]; !ok {
			gone = append(gone, q)
		}
	}
	u.mu.Unlock()
	if len(gone) > 0 {
		u.g.server.RemoveTools(gone...)
	}
	registered := map[string]*mcp.Tool{}
	for q, t := range want {
		if err := checkInputSchema(t.InputSchema); err != nil {
			u.log.Warn("tool skipped: bad input schema", "tool", t.Name, "err", err)
			continue
		}
		exposed := *t
		exposed.Name = q
		h, err := u.g.toolHandler(u, t)
		if err != nil {
			u.log.Warn("tool skipped: bad input schema", "tool", t.Name, "err", err)
			continue
		}
		if err := safely(func() { u.g.server.AddTool(&exposed, h) }); err != nil {
			u.log.Warn("tool skipped", "tool", t.Name, "err", err)
			continue
		}
		registered[q] = t
	}
	u.mu.Lock()
	u.tools = registered
	u.mu.Unlock()
	u.log.Debug("tools synced", "count", len(registered))
	return nil
}

// The listings a server's list_changed notifications resync.
const (
	listTools = iota
	listPrompts
	listResources
)

var listNames = [...]string{listTools: "tools", listPrompts: "prompts", listResources: "resources"}

// scheduleSync resyncs listing kind after a list_changed notification,
// unless a resync of it is already scheduled and has not started
// listing: that one will see the change. A server can send notifications
// far faster than a listing takes; one goroutine each would pile up in
// the gateway without bound.
func (u *upstream) scheduleSync(ctx context.Context, kind int, cs *mcp.ClientSession, sync func(context.Context, *mcp.ClientSession) error) {
	if !u.pending[kind].CompareAndSwap(false, true) {
		return
	}
	go func() {
		if err := sync(context.WithoutCancel(ctx), cs); err != nil {
			u.log.Warn("resync "+listNames[kind], "err", err)
		}
	}()
}

// maxListPages and maxListItems bound one listing of a server's tools,
// prompts, resources or resource templates. The gateway is a host process
// outside every sandbox; a server that always offers another page would
// otherwise have it fetch and hold pages for as long as it runs (a resync
// after a list_changed notification has no deadline).
const (
	maxListPages = 1000
	maxListItems = 10000
)

// listPages fetches every page of a listing (list gets the cursor, split
// returns a page's items and next cursor), refusing a listing beyond
// maxListPages pages or maxListItems items.
func listPages[R any, T any](ctx context.Context, what string, list func(context.Context, string) (R, error), split func(R) ([]T, string)) ([]T, error) {
	var out []T
	cursor := ""
	for page := 1; ; page++ {
		if page > maxListPages {
			return nil, fmt.Errorf("list %s: more than %d pages; the server's listing is refused", what, maxListPages)
		}
		res, err := list(ctx, cursor)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", what, err)
		}
		items, next := split(res)
		out = append(out, items...)
		if len(out) > maxListItems {
			return nil, fmt.Errorf("list %s: more than %d; the server's listing is refused", what, maxListItems)
		}
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

func checkInputSchema(s any) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return errors.New("input schema is not a JSON object")
	}
	if m["type"] != "object" {
		return fmt.Errorf("input schema type is %v, not \"object\"", m["type"])
	}
	return nil
}

func (u *upstream) syncPrompts(ctx context.Context, cs *mcp.ClientSession) error {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	u.pending[listPrompts].Store(false) // from here on, a change needs another resync
	prompts, err := listPages(ctx, "prompts", func(ctx context.Context, c string) (*mcp.ListPromptsResult, error) {
		return cs.ListPrompts(ctx, &mcp.ListPromptsParams{Cursor: c})
	}, func(r *mcp.ListPromptsResult) ([]*mcp.Prompt, string) { return r.Prompts, r.NextCursor })
	if err != nil {
		return err
	}
	want := map[string]*mcp.Prompt{}
	for _, p := range prompts {
		want[Qualify(u.cfg.Name, p.Name)] = p
	}
	u.mu.Lock()
	var gone []string
	for q := range u.prompts {
		if _, ok := want[q]; !ok {
			gone = append(gone, q)
		}
	}
	u.mu.Unlock()
	if len(gone) > 0 {
		u.g.server.RemovePrompts(gone...)
	}
	reg := map[string]string{}
	for q, p := range want {
		exposed := *p
		exposed.Name = q
		name := p.Name
		if err := safely(func() {
			u.g.server.AddPrompt(&exposed, func(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
				cs, err := u.session(ctx, u.g.opts.UnavailableWait)
				if err != nil {
					return nil, err
				}
				params := *req.Params
				params.Name = name
				return cs.GetPrompt(ctx, &params)
			})
		}); err != nil {
			u.log.Warn("prompt skipped", "prompt", name, "err", err)
			continue
		}
		reg[q] = name
	}
	u.mu.Lock()
	u.prompts = reg
	u.mu.Unlock()
	return nil
}

// Resources keep their URIs (tool results link to them); a URI another
// server already registered stays with that server.
func (u *upstream) syncResources(ctx context.Context, cs *mcp.ClientSession) error {
	u.syncMu.Lock()
	defer u.syncMu.Unlock()
	u.pending[listResources].Store(false) // from here on, a change needs another resync
	resources, err := listPages(ctx, "resources", func(ctx context.Context, c string) (*mcp.ListResourcesResult, error) {
		return cs.ListResources(ctx, &mcp.ListResourcesParams{Cursor: c})
	}, func(r *mcp.ListResourcesResult) ([]*mcp.Resource, string) { return r.Resources, r.NextCursor })
	if err != nil {
		return err
	}
	templates, err := listPages(ctx, "resource templates", func(ctx context.Context, c string) (*mcp.ListResourceTemplatesResult, error) {
		return cs.ListResourceTemplates(ctx, &mcp.ListResourceTemplatesParams{Cursor: c})
	}, func(r *mcp.ListResourceTemplatesResult) ([]*mcp.ResourceTemplate, string) {
		return r.ResourceTemplates, r.NextCursor
	})
	if err != nil {
		return err
	}
	wantR := map[string]*mcp.Resource{}
	for _, r := range resources {
		wantR[r.URI] = r
	}
	wantT := map[string]*mcp.ResourceTemplate{}
	for _, t := range templates {
		wantT[t.URITemplate] = t
	}
	u.g.mu.Lock()
	defer u.g.mu.Unlock()
	u.mu.Lock()
	var goneR, goneT []string
	for uri := range u.resources {
		if _, ok := wantR[uri]; !ok {
			goneR = append(goneR, uri)
			delete(u.resources, uri)
		}
	}
	for tpl := range u.templates {
		if _, ok := wantT[tpl]; !ok {
			goneT = append(goneT, tpl)
			delete(u.templates, tpl)
		}
	}
	u.mu.Unlock()
	if len(goneR) > 0 {
		u.g.server.RemoveResources(goneR...)
	}
	if len(goneT) > 0 {
		u.g.server.RemoveResourceTemplates(goneT...)
	}
	read := func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		cs, err := u.session(ctx, u.g.opts.UnavailableWait)
		if err != nil {
			return nil, err
		}
		return cs.ReadResource(ctx, req.Params)
	}
	for uri, r := range wantR {
		if owner := u.g.resourceOwner(uri, false); owner != nil && owner != u {
			u.log.Warn("resource skipped: another server has this URI", "uri", uri, "owner", owner.cfg.Name)
			continue
		}
		if _, err := url.Parse(uri); err != nil {
			u.log.Warn("resource skipped: bad URI", "uri", uri)
			continue
		}
		if err := safely(func() { u.g.server.AddResource(r, read) }); err != nil {
			u.log.Warn("resource skipped", "uri", uri, "err", err)
			continue
		}
		u.mu.Lock()
		u.resources[uri] = true
		u.mu.Unlock()
	}
	for tpl, t := range wantT {
		if owner := u.g.resourceOwner(tpl, true); owner != nil && owner != u {
			u.log.Warn("resource template skipped: another server has it", "template", tpl, "owner", owner.cfg.Name)
			continue
		}
		if err := safely(func() { u.g.server.AddResourceTemplate(t, read) }); err != nil {
			u.log.Warn("resource template skipped", "template", tpl, "err", err)
			continue
		}
		u.mu.Lock()
		u.templates[tpl] = true
		u.mu.Unlock()
	}
	return nil
}

// resourceOwner returns the server that registered a URI (or template).
func (g *Gateway) resourceOwner(key string, template bool) *upstream {
	for _, u := range g.upstreams {
		u.mu.Lock()
		ok := u.resources[key]
		if template {
			ok = u.templates[key]
		}
		u.mu.Unlock()
		if ok {
			return u
		}
	}
	return nil
}

// ownerOfURI finds the server serving a concrete URI, by exact resource or
// by template match.
func (g *Gateway) ownerOfURI(uri string) *upstream {
	if u := g.resourceOwner(uri, false); u != nil {
		return u
	}
	for _, u := range g.upstreams {
		u.mu.Lock()
		for tpl := range u.templates {
			if templateMatches(tpl, uri) {
				u.mu.Unlock()
				return u
			}
		}
		u.mu.Unlock()
	}
	return nil
}

// templateMatches is a conservative RFC 6570 level-1 match: literal parts
// must match in order; each {var} matches one or more characters.
func templateMatches(tpl, uri string) bool {
	var pat strings.Builder
	for {
		i := strings.IndexByte(tpl, '{')
		if i < 0 {
			pat.WriteString(escapeGlob(tpl))
			break
		}
		j := strings.IndexByte(tpl[i:], '}')
		if j < 0 {
			return false
		}
		pat.WriteString(escapeGlob(tpl[:i]))
		pat.WriteString("*")
		tpl = tpl[i+j+1:]
	}
	return approval.Glob(pat.String(), uri)
}

func escapeGlob(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`)
	return r.Replace(s)
}

func (g *Gateway) subscribe(ctx context.Context, req *mcp.SubscribeRequest) error {
	u := g.ownerOfURI(req.Params.URI)
	if u == nil {
		return fmt.Errorf("subscribe %s: no server has this resource", req.Params.URI)
	}
	cs, err := u.session(ctx, g.opts.UnavailableWait)
	if err != nil {
		return err
	}
	return cs.Subscribe(ctx, req.Params)
}

func (g *Gateway) unsubscribe(ctx context.Context, req *mcp.UnsubscribeRequest) error {
	u := g.ownerOfURI(req.Params.URI)
	if u == nil {
		return nil
	}
	cs, err := u.session(ctx, g.opts.UnavailableWait)
	if err != nil {
		return err
	}
	return cs.Unsubscribe(ctx, req.Params)
}

// complete routes completion/complete by the reference: a prompt by its
// qualified name, a resource template by its owner.
func (g *Gateway) complete(ctx context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
	if req.Params == nil || req.Params.Ref == nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "completion: missing ref"}
	}
	params := *req.Params
	ref := *params.Ref
	var u *upstream
	switch ref.Type {
	case "ref/prompt":
		server, name, ok := strings.Cut(ref.Name, Separator)
		if ok {
			u = g.upstreams[server]
			ref.Name = name
		}
	case "ref/resource":
		u = g.ownerOfURI(ref.URI)
		if u == nil {
			u = g.resourceOwner(ref.URI, true)
		}
	}
	if u == nil {
		return &mcp.CompleteResult{Completion: mcp.CompletionResultDetails{Values: []string{}}}, nil
	}
	cs, err := u.session(ctx, g.opts.UnavailableWait)
	if err != nil {
		return nil, err
	}
	params.Ref = &ref
	return cs.Complete(ctx, &params)
}

// clientOptions wire a server's notifications and requests to the
// gateway's clients.
func (u *upstream) clientOptions() *mcp.ClientOptions {
	g := u.g
	return &mcp.ClientOptions{
		// Input requests go back to the client that made the call (see
		// forward), not to handlers here.
		MultiRoundTrip: &mcp.MultiRoundTripOptions{Disabled: true},
		ToolListChangedHandler: func(ctx context.Context, req *mcp.ToolListChangedRequest) {
			u.scheduleSync(ctx, listTools, req.Session, u.syncTools)
		},
		PromptListChangedHandler: func(ctx context.Context, req *mcp.PromptListChangedRequest) {
			u.scheduleSync(ctx, listPrompts, req.Session, u.syncPrompts)
		},
		ResourceListChangedHandler: func(ctx context.Context, req *mcp.ResourceListChangedRequest) {
			u.scheduleSync(ctx, listResources, req.Session, u.syncResources)
		},
		ResourceUpdatedHandler: func(ctx context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
			// A server speaks for its own resources only: clients
			// subscribe through the URI's owner (see subscribe).
			if owner := g.ownerOfURI(req.Params.URI); owner != u {
				u.log.Warn("resource update dropped: the URI is not this server's", "uri", req.Params.URI)
				return
			}
			if err := g.server.ResourceUpdated(ctx, req.Params); err != nil {
				u.log.Debug("forward resource update", "err", err)
			}
		},
		LoggingMessageHandler: func(ctx context.Context, req *mcp.LoggingMessageRequest) {
			p := *req.Params
			p.Logger = u.cfg.Name + "/" + p.Logger
			if req.Params.Logger == "" {
				p.Logger = u.cfg.Name
			}
			for ss := range g.server.Sessions() {
				if err := ss.Log(u.logContext(ctx, ss), &p); err != nil {
					u.log.Debug("forward log message", "err", err)
				}
			}
		},
		ProgressNotificationHandler: func(ctx context.Context, req *mcp.ProgressNotificationClientRequest) {
			tok, ok := req.Params.ProgressToken.(string)
			if !ok {
				return
			}
			g.mu.Lock()
			r, ok := g.progress[tok]
			g.mu.Unlock()
			if !ok {
				return
			}
			if r.u != u {
				u.log.Warn("progress dropped: the token belongs to a call to another server", "token", tok, "owner", r.u.cfg.Name)
				return
			}
			p := *req.Params
			p.ProgressToken = r.token
			if err := r.ss.NotifyProgress(r.ctx, &p); err != nil {
				u.log.Debug("forward progress", "err", err)
			}
		},
		CreateMessageHandler: func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			ss, err := u.downstream(ctx)
			if err != nil {
				return nil, fmt.Errorf("sampling request from %s: %w", u.cfg.Name, err)
			}
			return ss.CreateMessage(ctx, req.Params)
		},
		ElicitationHandler: func(ctx context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			ss, err := u.downstream(ctx)
			if err != nil {
				return nil, fmt.Errorf("elicitation request from %s: %w", u.cfg.Name, err)
			}
			return ss.Elicit(ctx, req.Params)
		},
	}
}

// downstream picks the client session a server-to-client request (sampling,
// elicitation) belongs to: the one in the context (the SDK's multi
// round-trip path runs handlers in the call's context), else the only
// client with a call in flight to this server. Ambiguity is an error,
// never a guess: the request could leak to another client.
func (u *upstream) downstream(ctx context.Context) (*mcp.ServerSession, error) {
	if ss, ok := ctx.Value(downstreamKey{}).(*mcp.ServerSession); ok && ss != nil {
		return ss, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var found *mcp.ServerSession
	for ss := range u.inflight {
		if found != nil {
			return nil, errors.New("several clients have calls in flight; cannot tell which one asked")
		}
		found = ss
	}
	if found == nil {
		return nil, errors.New("no client call in flight")
	}
	return found, nil
}

// trackCall records a client call in flight to this server; its context
// is used to deliver the server's log messages to that client (on protocol
// 2026-07-28 a client's log level travels with its request).
func (u *upstream) trackCall(ctx context.Context, ss *mcp.ServerSession) func() {
	if ss == nil {
		return func() {}
	}
	c := &inflightCall{ctx: ctx}
	u.mu.Lock()
	u.inflight[ss] = append(u.inflight[ss], c)
	u.mu.Unlock()
	return func() {
		u.mu.Lock()
		l := slices.DeleteFunc(u.inflight[ss], func(x *inflightCall) bool { return x == c })
		if len(l) == 0 {
			delete(u.inflight, ss)
		} else {
			u.inflight[ss] = l
		}
		u.mu.Unlock()
	}
}

type inflightCall struct{ ctx context.Context }

// logContexts returns, for each client session, the context to log in: the
// latest in-flight call's, or ctx.
func (u *upstream) logContext(ctx context.Context, ss *mcp.ServerSession) context.Context {
	u.mu.Lock()
	defer u.mu.Unlock()
	if l := u.inflight[ss]; len(l) > 0 {
		return l[len(l)-1].ctx
	}
	return ctx
}

// auditUnknownTools records calls the SDK rejects before any handler runs
// (a tool hidden by the tools filter, or one that does not exist), so that
// every tools/call is in the audit log.
func (g *Gateway) auditUnknownTools(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		if method != "tools/call" || err == nil {
			return res, err
		}
		var jerr *jsonrpc.Error
		ctr, ok := req.(*mcp.CallToolRequest)
		if !ok || !errors.As(err, &jerr) || !strings.HasPrefix(jerr.Message, "unknown tool") {
			return res, err
		}
		server, tool, found := strings.Cut(ctr.Params.Name, Separator)
		if !found {
			server, tool = "", ctr.Params.Name
		}
		rec := &store.AuditRecord{
			Gateway: g.opts.Name, Server: orDash(server), Tool: orDash(tool),
			Arguments: g.redact.JSON(ctr.Params.Arguments), Decision: store.DecisionBlocked,
			Reason: "no such tool (unknown, or hidden by the tools filter)", Error: jerr.Message,
		}
		if ctr.Session != nil {
			rec.Session = ctr.Session.ID()
		}
		// The call is refused either way; a failed write is logged.
		if aerr := g.appendAudit(ctx, rec); aerr != nil {
			g.log.Error("write audit record", "tool", ctr.Params.Name, "err", aerr)
		}
		return res, err
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
