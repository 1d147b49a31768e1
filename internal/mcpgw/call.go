package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// cardReadTimeout bounds reading a file's current content for a card.
const cardReadTimeout = 10 * time.Second

// auditWriteTimeout bounds one audit record write.
const auditWriteTimeout = 5 * time.Second

// DecisionStarted marks the audit record written just before a call is
// forwarded (after it was classified green or approved); the call's
// outcome follows in a second record with the decision allowed or
// approved. A call whose started record cannot be written is refused, so
// no call runs unrecorded; a started record without an outcome is a call
// the gateway did not see finish (it died or the store failed).
const DecisionStarted = "started"

// callTarget is where an approved call goes: a server's tool or a builtin.
type callTarget struct {
	server      string
	tool        *mcp.Tool // the tool as its server defines it
	policy      *approval.Policy
	read        approval.ReadFunc
	u           *upstream // nil for builtins
	builtin     func(ctx context.Context, args json.RawMessage) (*mcp.CallToolResult, error)
	precheck    func(ctx context.Context, args map[string]any) error
	readFor     func(args map[string]any) approval.ReadFunc
	unsandboxed bool
	// args is what the tool's input schema declares; parseArgs checks
	// every call's arguments against it before classifying.
	args argSpec
}

func (g *Gateway) toolHandler(u *upstream, t *mcp.Tool) (mcp.ToolHandler, error) {
	spec, err := newArgSpec(t.InputSchema, false)
	if err != nil {
		return nil, err
	}
	target := callTarget{
		server: u.cfg.Name, tool: t, policy: &u.policy, read: u.read, u: u,
		unsandboxed: u.cfg.Transport == TransportStdio && u.cfg.Sandbox.Backend == BackendNone,
		args:        spec,
	}
	return func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return g.call(ctx, req, target)
	}, nil
}

func (g *Gateway) addBuiltin(b Builtin) error {
	if b.Tool == nil || b.Tool.Name == "" || b.Handler == nil {
		return errors.New("builtin tool: needs a Tool with a name and a Handler")
	}
	if err := b.Policy.Compile(); err != nil {
		return fmt.Errorf("builtin tool %s: %w", b.Tool.Name, err)
	}
	pol := b.Policy
	// Gateway-wide rules naming the builtin namespace come first: the user's
	// policy overrides the builtin defaults.
	pol.Rules = append(append([]approval.Rule{}, g.cfg.Approval.Rules...), b.Policy.Rules...)
	if pol.Timeout == 0 {
		pol.Timeout = g.cfg.Approval.Timeout
	}
	// The gateway's own tools are not an untrusted server: their
	// annotations are IronClaw's and may count.
	pol.TrustHints = true
	// The gateway's own handlers decode with encoding/json, which matches
	// keys case-insensitively: only the exact declared names are accepted.
	spec, err := newArgSpec(b.Tool.InputSchema, true)
	if err != nil {
		return fmt.Errorf("builtin tool %s: %w", b.Tool.Name, err)
	}
	target := callTarget{server: BuiltinServer, tool: b.Tool, policy: &pol, builtin: b.Handler, args: spec,
		precheck: b.Precheck, readFor: b.ReadFor}
	exposed := *b.Tool
	exposed.Name = Qualify(BuiltinServer, b.Tool.Name)
	return safely(func() {
		g.server.AddTool(&exposed, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return g.call(ctx, req, target)
		})
	})
}

// call is the one path every tools/call takes: classify, hold if red, run,
// audit.
func (g *Gateway) call(ctx context.Context, req *mcp.CallToolRequest, t callTarget) (*mcp.CallToolResult, error) {
	start := time.Now()
	qualified := Qualify(t.server, t.tool.Name)
	raw := req.Params.Arguments
	rec := &store.AuditRecord{
		Gateway: g.opts.Name, Server: t.server, Tool: t.tool.Name,
		Arguments: g.redact.JSON(raw),
	}
	if req.Session != nil {
		rec.Session = req.Session.ID()
	}
	defer func() {
		// The outcome. A call that did not run needs no started record;
		// one that ran has one, so a failure here loses only the outcome.
		rec.Duration = time.Since(start)
		if err := g.appendAudit(ctx, rec); err != nil {
			g.log.Error("write audit record", "server", t.server, "tool", t.tool.Name, "decision", rec.Decision, "err", err)
		}
	}()

	// Decode once: the classifier, the card and a builtin all see args
	// (a builtin receives canon, its exact encoding).
	args, canon, err := parseArgs(raw, t.args)
	if err != nil {
		rec.Decision, rec.Reason, rec.Error = store.DecisionBlocked, "arguments refused before classification", err.Error()
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("%s: %v", qualified, err)}
	}
	if t.precheck != nil {
		if err := t.precheck(ctx, args); err != nil {
			rec.Decision, rec.Reason, rec.Error = store.DecisionBlocked, "refused before classification", g.redact.String(err.Error())
			return errorResult(fmt.Sprintf("%s refused: %s", qualified, rec.Error)), nil
		}
	}
	c := approval.Call{Server: t.server, Tool: t.tool.Name, Arguments: args, Annotations: t.tool.Annotations}
	v := t.policy.Classify(c)
	rec.Class, rec.Reason = string(v.Class), v.Reason
	if t.unsandboxed {
		rec.Reason += "; server is UNSANDBOXED"
	}
	if v.Class != approval.Green {
		rctx, cancel := context.WithTimeout(ctx, cardReadTimeout)
		read := t.read
		if t.readFor != nil {
			read = t.readFor(args)
		}
		card := approval.BuildCard(rctx, qualified, c, g.redact, read)
		cancel()
		if t.unsandboxed {
			card.Note = joinNote("this server runs UNSANDBOXED on the host, as the gateway's uid: it could have approved this itself", card.Note)
		}
		g.log.Info("tool call held for approval", "tool", qualified, "reason", v.Reason)
		held, out := g.opts.Queue.Hold(ctx, approval.Request{
			Gateway: g.opts.Name, Server: t.server, Tool: qualified, Verdict: v, Card: card,
		}, t.policy.TimeoutOr(g.opts.ApprovalTimeout))
		rec.Approver = out.By
		switch out.Result {
		case approval.OutcomeApproved:
			rec.Decision = store.DecisionApproved
			g.log.Info("tool call approved", "tool", qualified, "id", held.ID, "by", out.By)
		case approval.OutcomeDenied:
			rec.Decision, rec.Error = store.DecisionDenied, "denied"+byNote(out)
			return errorResult(fmt.Sprintf("The call to %s was denied by %s%s.", qualified, orSomeone(out.By), noteSuffix(out.Note))), nil
		case approval.OutcomeTimeout:
			rec.Decision, rec.Error = store.DecisionTimeout, out.Note
			return errorResult(fmt.Sprintf("The call to %s needed approval and was denied: %s.", qualified, out.Note)), nil
		default:
			rec.Decision, rec.Error = store.DecisionCancelled, out.Note
			return nil, ctx.Err()
		}
	} else {
		rec.Decision = store.DecisionAllowed
	}

	// Fail closed: the call runs only once it is on the record.
	started := *rec
	started.Decision, started.Duration = DecisionStarted, time.Since(start)
	if err := g.appendAudit(ctx, &started); err != nil {
		g.log.Error("tool call refused: the audit log cannot be written", "tool", qualified, "err", err)
		rec.Error = "refused: the audit log cannot be written: " + err.Error()
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: fmt.Sprintf("%s: refused: the gateway cannot write its audit log", qualified)}
	}
	res, err := g.forward(ctx, req, t, canon)
	if err != nil {
		rec.Error = g.redact.String(err.Error())
		var jerr *jsonrpc.Error
		if errors.As(err, &jerr) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return errorResult(fmt.Sprintf("%s failed: %s", qualified, rec.Error)), nil
	}
	if b, merr := json.Marshal(res); merr == nil {
		rec.ResultBytes = int64(len(b))
	}
	if res.IsError {
		rec.Error = "tool reported an error"
	}
	return res, nil
}

// forward runs an approved call. A builtin gets canon, the arguments as
// classified; a server gets the client's bytes, which parseArgs has checked
// decode to the same object (no repeated or case-variant keys).
func (g *Gateway) forward(ctx context.Context, req *mcp.CallToolRequest, t callTarget, canon json.RawMessage) (*mcp.CallToolResult, error) {
	if t.builtin != nil {
		return t.builtin(ctx, canon)
	}
	cs, err := t.u.session(ctx, g.opts.UnavailableWait)
	if err != nil {
		return nil, err
	}
	// Multi round-trip requests (protocol 2026-07-28) pass straight through:
	// the server's input requests go back to the client in the result, and
	// the client's retry brings the responses and state back here.
	params := &mcp.CallToolParams{Name: t.tool.Name, InputResponses: req.Params.InputResponses, RequestState: req.Params.RequestState}
	if len(req.Params.Arguments) > 0 {
		params.Arguments = req.Params.Arguments
	}
	if tok := req.Params.GetProgressToken(); tok != nil && req.Session != nil {
		// Mint our own token: tokens of different clients may collide.
		gt := fmt.Sprintf("ironclaw-%d", g.token.Add(1))
		g.mu.Lock()
		g.progress[gt] = progressRoute{u: t.u, ss: req.Session, token: tok, ctx: ctx}
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			delete(g.progress, gt)
			g.mu.Unlock()
		}()
		params.SetProgressToken(gt)
	}
	// Logging level (protocol 2026-07-28 carries it per request): pass the
	// client's own; for older clients ask for everything, since their
	// session filters by the level they set.
	level := mcp.LoggingLevel("debug")
	if m := req.Params.GetMeta(); m != nil {
		if l, ok := m[mcp.MetaKeyLogLevel].(string); ok && l != "" {
			level = mcp.LoggingLevel(l)
		}
	}
	meta := params.GetMeta()
	if meta == nil {
		meta = map[string]any{}
	}
	meta[mcp.MetaKeyLogLevel] = level
	params.SetMeta(meta)
	done := t.u.trackCall(ctx, req.Session)
	defer done()
	if req.Session != nil {
		ctx = context.WithValue(ctx, downstreamKey{}, req.Session)
	}
	return cs.CallTool(ctx, params)
}

// appendAudit writes one audit record, even after ctx is cancelled.
func (g *Gateway) appendAudit(ctx context.Context, rec *store.AuditRecord) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
	defer cancel()
	_, err := g.opts.Store.AppendAudit(actx, rec)
	return err
}

func errorResult(msg string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: msg}}}
}

func joinNote(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

func orSomeone(by string) string {
	if by == "" {
		return "the approver"
	}
	return by
}

func noteSuffix(n string) string {
	if n == "" {
		return ""
	}
	return ": " + n
}

func byNote(o approval.Outcome) string {
	s := ""
	if o.By != "" {
		s = " by " + o.By
	}
	if o.Note != "" {
		s += ": " + o.Note
	}
	return s
}
