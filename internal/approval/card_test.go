package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// applyUnified applies a diff produced by Unified to old, checking every
// context and deleted line, so a wrong hunk fails the test.
func applyUnified(t *testing.T, old, diff string) string {
	t.Helper()
	a := lineSlice(old)
	lines := strings.SplitAfter(diff, "\n")
	var out []string
	pos := 0
	for i := 2; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, "@@ ") {
			t.Fatalf("expected hunk header, got %q in\n%s", l, diff)
		}
		var aStart int
		f := strings.Fields(l)[1] // -start[,len]
		s, _, _ := strings.Cut(strings.TrimPrefix(f, "-"), ",")
		aStart, _ = strconv.Atoi(s)
		if strings.HasSuffix(f, ",0") {
			aStart++ // empty range names the line before
		}
		for pos < aStart-1 {
			out = append(out, a[pos])
			pos++
		}
		for i+1 < len(lines) && lines[i+1] != "" && !strings.HasPrefix(lines[i+1], "@@ ") {
			i++
			l := lines[i]
			body := l[1:]
			if i+1 < len(lines) && strings.HasPrefix(lines[i+1], `\ No newline`) {
				body = strings.TrimSuffix(body, "\n")
				i++
			}
			switch l[0] {
			case ' ', '-':
				if pos >= len(a) || a[pos] != body {
					t.Fatalf("line %d: diff says %q, old has %q\n%s", pos, body, a[min(pos, len(a)-1)], diff)
				}
				if l[0] == ' ' {
					out = append(out, body)
				}
				pos++
			case '+':
				out = append(out, body)
			default:
				t.Fatalf("bad diff line %q", l)
			}
		}
	}
	out = append(out, a[pos:]...)
	return strings.Join(out, "")
}

func TestUnifiedRoundTripsRandomEdits(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	words := []string{"a\n", "b\n", "c\n", "d\n", "e\n", "f"}
	gen := func() string {
		var sb strings.Builder
		for n := rng.Intn(30); n > 0; n-- {
			sb.WriteString(words[rng.Intn(len(words)-1)])
		}
		if rng.Intn(4) == 0 {
			sb.WriteString("tail-without-newline")
		}
		return sb.String()
	}
	for i := 0; i < 2000; i++ {
		a, b := gen(), gen()
		d := Unified("f", a, b)
		if a == b {
			if d != "" {
				t.Fatalf("equal inputs gave a diff")
			}
			continue
		}
		if got := applyUnified(t, a, d); got != b {
			t.Fatalf("case %d: applying\n%s\nto %q gave %q, want %q", i, d, a, got, b)
		}
	}
}

// TestUnifiedAgreesWithPatch applies our diff with patch(1) (Debian
// package "patch", which the test command installs).
func TestUnifiedAgreesWithPatch(t *testing.T) {
	patch := testutil.RequireCommand(t, "patch")
	dir := t.TempDir()
	old := "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n"
	new := "one\n2\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\neleven\n"
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte(old), 0o644)
	cmd := exec.Command(patch, "-s", "-p1", "-d", dir)
	cmd.Stdin = strings.NewReader(Unified("f", old, new))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("patch: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(p); string(got) != new {
		t.Fatalf("patched file %q", got)
	}
}

func TestBuildCard(t *testing.T) {
	ctx := context.Background()
	red := NewRedactor("hunter2-secret")
	files := map[string]string{"/data/a.txt": "hello\nworld\n"}
	read := func(_ context.Context, p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		if p == "/data/denied" {
			return nil, fmt.Errorf("open %s: %w", p, fs.ErrPermission)
		}
		return nil, fmt.Errorf("open %s: %w", p, fs.ErrNotExist)
	}
	t.Run("write existing file", func(t *testing.T) {
		c := BuildCard(ctx, "fs__write_file", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/a.txt", "content": "hello\nthere\n"}}, red, read)
		if c.Kind != CardFile || c.Path != "/data/a.txt" {
			t.Fatalf("card %+v", c)
		}
		want := "--- a/data/a.txt\n+++ b/data/a.txt\n@@ -1,2 +1,2 @@\n hello\n-world\n+there\n"
		if c.Diff != want {
			t.Errorf("diff:\n%s\nwant:\n%s", c.Diff, want)
		}
	})
	t.Run("new file", func(t *testing.T) {
		c := BuildCard(ctx, "fs__write_file", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/new", "content": "x\n"}}, red, read)
		if c.Note != "new file" || !strings.Contains(c.Diff, "+x\n") {
			t.Errorf("card %+v", c)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		c := BuildCard(ctx, "fs__write_file", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/denied", "content": "x\n"}}, red, read)
		if !strings.Contains(c.Note, "current content unavailable") || !strings.Contains(c.Diff, "+x") {
			t.Errorf("card %+v", c)
		}
	})
	t.Run("edits applied to current content", func(t *testing.T) {
		c := BuildCard(ctx, "fs__edit_file", Call{Tool: "edit_file", Arguments: map[string]any{"path": "/data/a.txt",
			"edits": []any{map[string]any{"oldText": "world", "newText": "moon"}}}}, red, read)
		if !strings.Contains(c.Diff, "-world\n+moon\n") {
			t.Errorf("diff %q", c.Diff)
		}
		c = BuildCard(ctx, "fs__edit_file", Call{Tool: "edit_file", Arguments: map[string]any{"path": "/data/a.txt",
			"edits": []any{map[string]any{"oldText": "absent", "newText": "x"}}}}, red, read)
		if !strings.Contains(c.Note, "oldText not found") || c.Diff != "" {
			t.Errorf("card %+v", c)
		}
	})
	t.Run("secret in new content is redacted", func(t *testing.T) {
		c := BuildCard(ctx, "fs__write_file", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/a.txt", "content": "pw=hunter2-secret\n"}}, red, read)
		if strings.Contains(c.Diff, "hunter2") || strings.Contains(string(c.Arguments), "hunter2") {
			t.Errorf("secret leaked: %+v", c)
		}
	})
	t.Run("command", func(t *testing.T) {
		c := BuildCard(ctx, "ironclaw__sandbox_run", Call{Tool: "sandbox_run", Arguments: map[string]any{"command": []any{"sh", "-c", "rm -rf /tmp/x; echo 'hi'"}}}, red, nil)
		if c.Kind != CardCommand || c.Command != `sh -c 'rm -rf /tmp/x; echo '\''hi'\'''` {
			t.Errorf("command %q", c.Command)
		}
	})
	t.Run("arguments", func(t *testing.T) {
		c := BuildCard(ctx, "web__post", Call{Tool: "post", Arguments: map[string]any{"url": "http://x", "token": "t"}}, red, nil)
		if c.Kind != CardArguments || strings.Contains(string(c.Arguments), `"t"`) {
			t.Errorf("card %+v", c)
		}
	})
	t.Run("render escapes terminal controls", func(t *testing.T) {
		c := BuildCard(ctx, "x__y", Call{Tool: "y", Arguments: map[string]any{"a": "\x1b[2Jboom"}}, red, nil)
		if r := c.Render(); strings.ContainsRune(r, 0x1b) {
			t.Errorf("ESC reached the terminal: %q", r)
		}
	})
	t.Run("render escapes bidi and invisible format characters", func(t *testing.T) {
		// "Trojan Source": a right-to-left override makes a terminal that
		// applies the bidi algorithm show text in another order than it
		// runs; zero-width characters hide what is there.
		cmd := "echo ok \u202e; rm -rf ~ #\u202c\u2066\u200b\u2028x"
		var sh string
		if err := json.Unmarshal([]byte(`"`+cmd+`"`), &sh); err != nil {
			t.Fatal(err)
		}
		c := BuildCard(ctx, "x__run", Call{Tool: "run", Arguments: map[string]any{"command": []any{"sh", "-c", sh}}}, red, nil)
		r := c.Render()
		for _, bad := range []rune{0x202e, 0x202c, 0x2066, 0x200b, 0x2028} {
			if strings.ContainsRune(r, bad) {
				t.Errorf("U+%04X reached the terminal: %q", bad, r)
			}
		}
		if !strings.Contains(r, `\u202e`) {
			t.Errorf("the override is not shown escaped: %q", r)
		}
	})
	_ = errors.New
}
