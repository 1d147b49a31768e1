package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Card kinds.
const (
	CardFile      = "file"
	CardCommand   = "command"
	CardArguments = "arguments"
)

// Card is what a person sees before approving a held call: for a file
// write the unified diff against the file's current content, for a command
// its command line, otherwise the (redacted) arguments.
type Card struct {
	Kind string `json:"kind"`
	// Title is one line: "fs__write_file: write /data/a.txt".
	Title string `json:"title"`
	// Path is the file a file card is about (as the server sees it).
	Path string `json:"path,omitempty"`
	// Diff is the unified diff of a file card.
	Diff string `json:"diff,omitempty"`
	// Command is the shell-quoted command line of a command card.
	Command string `json:"command,omitempty"`
	// Arguments are the redacted arguments (every card has them).
	Arguments json.RawMessage `json:"arguments"`
	// Note explains anything the card could not show (an unreadable file).
	Note string `json:"note,omitempty"`
}

// ReadFunc reads the current content of a file as the server would see
// it. The gateway implements it by reading the file through the server's
// granted mount, confined to that mount. It returns an error wrapping
// fs.ErrNotExist for a missing file.
type ReadFunc func(ctx context.Context, path string) ([]byte, error)

// maxCardFile is the largest current file content a card diffs.
const maxCardFile = 1 << 20

var (
	pathKeys    = []string{"path", "file_path", "filepath", "file", "filename", "target"}
	contentKeys = []string{"content", "contents", "text", "data", "body"}
	commandKeys = []string{"command", "cmd", "cmdline", "script"}
)

// fileWriteVerbs mark a tool that writes a file when it also takes a path.
var fileWriteVerbs = wordSet("write", "create", "save", "put", "edit", "overwrite", "append", "update", "replace", "patch")

// BuildCard builds the card of a held call. qualified is the tool's name as
// the client sees it (server__tool); read may be nil when the server has
// no readable mount.
func BuildCard(ctx context.Context, qualified string, c Call, red *Redactor, read ReadFunc) Card {
	args, _ := json.Marshal(red.Value(mapOrEmpty(c.Arguments)))
	card := Card{Kind: CardArguments, Title: qualified, Arguments: args}
	words := Words(c.Tool)
	if _, ok := hasWord(words, fileWriteVerbs); ok {
		if p, ok := stringArg(c.Arguments, pathKeys); ok {
			fileCard(ctx, &card, qualified, p, c, red, read)
			return card
		}
	}
	if cmd, ok := commandLine(c.Arguments); ok {
		card.Kind = CardCommand
		card.Command = red.String(cmd)
		card.Title = qualified + ": run " + firstLine(card.Command, 80)
		return card
	}
	return card
}

func fileCard(ctx context.Context, card *Card, qualified, p string, c Call, red *Redactor, read ReadFunc) {
	card.Kind, card.Path = CardFile, p
	card.Title = qualified + ": write " + p
	var cur []byte
	var err error
	exists := true
	if read == nil {
		err = errors.New("the server has no mount the gateway can read")
	} else {
		cur, err = read(ctx, p)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		exists, err, cur = false, nil, nil
	case err == nil && len(cur) > maxCardFile:
		err = fmt.Errorf("current content is %d bytes, over the %d-byte diff limit", len(cur), maxCardFile)
	}
	if err != nil {
		card.Note = "current content unavailable: " + red.String(err.Error()) + "; showing the new content only"
		cur, exists = nil, false
	}
	newContent, ok, why := proposedContent(string(cur), c.Arguments)
	if !ok {
		if card.Note != "" {
			card.Note += "; "
		}
		card.Note += why
		return
	}
	if !exists && err == nil {
		card.Note = "new file"
	}
	d := Unified(strings.TrimPrefix(p, "/"), string(cur), newContent)
	if d == "" {
		d = "(no change)\n"
	}
	card.Diff = red.String(d)
}

// proposedContent computes a file's content after the call: the content
// argument, or the current content with "edits" ([{oldText,newText}], as
// server-filesystem's edit_file takes them) applied in order.
func proposedContent(cur string, args map[string]any) (string, bool, string) {
	if s, ok := stringArg(args, contentKeys); ok {
		if w, _ := hasWord(Words(fmt.Sprint(args["mode"])), wordSet("append")); w != "" {
			return cur + s, true, ""
		}
		return s, true, ""
	}
	edits, ok := args["edits"].([]any)
	if !ok {
		return "", false, "no content or edits argument to diff; see the arguments"
	}
	out := cur
	for i, e := range edits {
		m, ok := e.(map[string]any)
		if !ok {
			return "", false, fmt.Sprintf("edit %d is not an object", i)
		}
		oldText, ok1 := m["oldText"].(string)
		newText, ok2 := m["newText"].(string)
		if !ok1 || !ok2 {
			return "", false, fmt.Sprintf("edit %d lacks oldText/newText strings", i)
		}
		if !strings.Contains(out, oldText) {
			return "", false, fmt.Sprintf("edit %d: oldText not found in the current content (the call would fail)", i)
		}
		out = strings.Replace(out, oldText, newText, 1)
	}
	return out, true, ""
}

func mapOrEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func stringArg(args map[string]any, keys []string) (string, bool) {
	for _, k := range keys {
		if s, ok := args[k].(string); ok {
			return s, true
		}
	}
	return "", false
}

// commandLine renders a command argument: a string as is, a list of
// strings shell-quoted, followed by an "args" list if there is one.
func commandLine(args map[string]any) (string, bool) {
	for _, k := range commandKeys {
		switch v := args[k].(type) {
		case string:
			if extra, ok := stringList(args["args"]); ok && len(extra) > 0 {
				return v + " " + ShellJoin(extra), true
			}
			return v, true
		case []any:
			if l, ok := stringList(v); ok && len(l) > 0 {
				if extra, ok := stringList(args["args"]); ok {
					l = append(l, extra...)
				}
				return ShellJoin(l), true
			}
		}
	}
	return "", false
}

func stringList(v any) ([]string, bool) {
	l, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// ShellJoin quotes each word for a POSIX shell and joins them with spaces.
func ShellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func firstLine(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// Render formats the card for a terminal. Control characters other than
// newline and tab, and invisible format characters, are shown escaped
// (see SanitizeTerminal), so a card cannot drive the terminal nor show
// its text in another order than it runs.
func (c Card) Render() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\n", c.Title)
	if c.Note != "" {
		fmt.Fprintf(&sb, "note: %s\n", c.Note)
	}
	switch c.Kind {
	case CardFile:
		sb.WriteString(c.Diff)
	case CardCommand:
		fmt.Fprintf(&sb, "$ %s\n", c.Command)
	}
	var pretty any
	if UnmarshalExact(c.Arguments, &pretty) == nil {
		b, _ := json.MarshalIndent(pretty, "", "  ")
		fmt.Fprintf(&sb, "arguments:\n%s\n", b)
	}
	return SanitizeTerminal(sb.String())
}

// SanitizeTerminal escapes control characters (ESC and friends) except
// newline and tab, and the invisible format characters (Unicode Cf, and
// the line and paragraph separators): bidi overrides and isolates, which
// make a terminal that applies the bidi algorithm show text in another
// order than it runs ("Trojan Source"), zero-width characters and the
// like, which hide what is there.
func SanitizeTerminal(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&sb, "\\x%02x", r)
			continue
		case unicode.Is(unicode.Cf, r) || r == 0x2028 || r == 0x2029 || r == utf8.RuneError:
			fmt.Fprintf(&sb, "\\u%04x", r)
			continue
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
