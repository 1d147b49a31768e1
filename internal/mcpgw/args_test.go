package mcpgw

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// TestSandboxRunCaseVariantKeysAreRefused is the regression test of an
// approval bypass: the classifier looked up "mounts" and "allow" in a
// case-sensitive map, while the handler's encoding/json decode matched
// "Mounts" and "ALLOW" (and "mountſ", with a long s) to the same fields, so
// a call that mounted the host root read-write with full egress was green
// and ran. Such calls must be refused before classification, never run.
func TestSandboxRunCaseVariantKeysAreRefused(t *testing.T) {
	sbx, err := SandboxRun("/nonexistent/ironclaw", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := startGateway(t, `{"mcpServers":{}}`, func(o *Options) {
		o.Builtins = []Builtin{sbx}
		o.ApprovalTimeout = 100 * time.Millisecond // before the fix, red variants waited
	})
	bad := []string{
		`{"command":["sh"],"Mounts":["/:/host:rw"],"ALLOW":["0.0.0.0/0"]}`,
		`{"command":["sh"],"mountſ":["/:/host:rw"]}`,
		`{"command":["sh"],"mounts":[],"mounts":["/:/host:rw"]}`,
		`{"command":["sh"],"allow":null,"Allow":["0.0.0.0/0"]}`,
		`{"command":["sh"],"unknown":1}`,
	}
	for i, args := range bad {
		_, err := h.call(t, "ironclaw__sandbox_run", json.RawMessage(args))
		var jerr *jsonrpc.Error
		if !errors.As(err, &jerr) || jerr.Code != jsonrpc.CodeInvalidParams {
			t.Errorf("%s: got %v, want an invalid-params error", args, err)
		}
		recs := h.audit(t, i+1)
		if r := recs[i]; r.Decision != store.DecisionBlocked || r.Class == string(approval.Green) {
			t.Errorf("%s: audit record %+v, want blocked and not green", args, r)
		}
	}
	// The exact names still work: a plain command is green (it then fails
	// to start the nonexistent binary, after classification).
	r, err := h.call(t, "ironclaw__sandbox_run", json.RawMessage(`{"command":["true"]}`))
	if err != nil || !r.IsError || !strings.Contains(text(r), "start ironclaw run") {
		t.Fatalf("plain call: %v %q", err, text(r))
	}
	if rec := h.audit(t, len(bad)+1)[len(bad)]; rec.Class != string(approval.Green) || rec.Decision != store.DecisionAllowed {
		t.Fatalf("plain call record %+v", rec)
	}
}

func TestParseArgs(t *testing.T) {
	loose := argSpec{props: map[string]bool{"path": true, "mode": true}}
	exact := argSpec{props: loose.props, exact: true}
	for _, tc := range []struct {
		raw   string
		spec  argSpec
		want  string // canonical encoding, or "" for an error
		error string
	}{
		{``, exact, `{}`, ""},
		{`null`, exact, `{}`, ""},
		{` {"path":"/a"} `, exact, `{"path":"/a"}`, ""},
		{`{"mode":1,"path":"/a"}`, exact, `{"mode":1,"path":"/a"}`, ""},
		{`{"other":1}`, loose, `{"other":1}`, ""},                 // servers may take undeclared keys
		{`{"p":{"x":1,"X":2}}`, loose, `{"p":{"X":2,"x":1}}`, ""}, // nested case variants are distinct keys
		// Numbers pass as written, not rounded through float64.
		{`{"mode":9007199254740993,"path":1e400}`, exact, `{"mode":9007199254740993,"path":1e400}`, ""},
		{`{"mode":0.1000000000000000055511151231257827}`, exact, `{"mode":0.1000000000000000055511151231257827}`, ""},
		{`{"other":1}`, exact, "", `argument "other": unknown`},
		{`{"Path":"/a"}`, loose, "", `differs from the declared "path" only in case`},
		{`{"PATH":"/a"}`, exact, "", "unknown"},
		{`{"mode":1,"modE":2}`, loose, "", "only in case"},
		{"{\"path\u017f\":1}", loose, `{"pathſ":1}`, ""}, // not a fold of "path"
		{"{\"mode\":1,\"mod\u0045\":2}", loose, "", "only in case"},
		{`{"path":"/a","path":"/b"}`, loose, "", `"path" appears twice`},
		{`{"a":[{"k":1,"k":2}]}`, loose, "", `"k" appears twice`},
		{`{"path":"/a"} {}`, loose, "", "trailing data"},
		{`[1]`, loose, "", "must be a JSON object"},
		{`"x"`, loose, "", "must be a JSON object"},
		{`{"path":`, loose, "", "not valid JSON"},
		{strings.Repeat(`{"a":`, 200) + "1" + strings.Repeat("}", 200), loose, "", "deeper than"},
	} {
		args, canon, err := parseArgs(json.RawMessage(tc.raw), tc.spec)
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Errorf("parseArgs(%.40q): %v, want an error with %q", tc.raw, err, tc.error)
			}
			continue
		}
		if err != nil || string(canon) != tc.want || args == nil {
			t.Errorf("parseArgs(%.40q) = %s, %v; want %s", tc.raw, canon, err, tc.want)
		}
	}
}

// FuzzSandboxRunArgs pairs the gateway's classification of sandbox_run
// arguments with the handler's decoding of what the gateway passes it: a
// call classified green must never decode to mounts or egress rules, and
// whatever the gateway accepts must decode, with plain encoding/json (as
// any Go tool would), to exactly what the classifier saw.
func FuzzSandboxRunArgs(f *testing.F) {
	for _, s := range []string{
		`{"command":["sh"]}`,
		`{"command":["sh"],"Mounts":["/:/host:rw"],"ALLOW":["0.0.0.0/0"]}`,
		`{"command":["sh"],"mountſ":["/:/host:rw"]}`,
		`{"command":["sh"],"mounts":[],"mounts":["/:/host:rw"]}`,
		`{"code":"id","allow":null}`,
		`{"code":"id","mounts":["/tmp:/x"]}`,
		"{\"\u006dounts\":[\"/:/h\"]}",
		`{"command":["x"],"pids":1e3,"timeout":"1s"}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	sbx, err := SandboxRun("/nonexistent/ironclaw", "")
	if err != nil {
		f.Fatal(err)
	}
	pol := sbx.Policy
	if err := pol.Compile(); err != nil {
		f.Fatal(err)
	}
	spec, err := newArgSpec(sbx.Tool.InputSchema, true)
	if err != nil {
		f.Fatal(err)
	}
	r := &sandboxRunner{args: spec}
	f.Fuzz(func(t *testing.T, raw []byte) {
		args, canon, err := parseArgs(raw, spec)
		if err != nil {
			return
		}
		v := pol.Classify(approval.Call{Server: BuiltinServer, Tool: "sandbox_run", Arguments: args})
		in, err := r.decode(canon)
		if err != nil {
			return // the handler refuses it: nothing runs
		}
		if v.Class == approval.Green && (len(in.Mounts) > 0 || len(in.Allow) > 0) {
			t.Fatalf("%s: classified green (%s) but runs with mounts %q and allow %q", raw, v.Reason, in.Mounts, in.Allow)
		}
		// What a case-insensitive decoder makes of the client's own bytes
		// is what the classifier saw.
		var plain SandboxRunInput
		if json.Unmarshal(raw, &plain) == nil {
			a, _ := json.Marshal(plain)
			b, _ := json.Marshal(in)
			if !bytes.Equal(a, b) {
				t.Fatalf("%s: encoding/json reads %s, the gateway classified %s", raw, a, b)
			}
		}
	})
}
