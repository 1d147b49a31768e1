package approval

import (
	"strings"
	"unicode"
)

// Words splits s into lower-case word tokens. Words are separated by any
// character that is not a letter or digit, and by lower-to-upper case
// changes ("getFile" is "get", "file"; "HTTPServer" is "http", "server").
// Matching on these tokens, never on substrings, is what keeps "targets"
// from matching "get".
func Words(s string) []string {
	var out []string
	rs := []rune(s)
	start := -1
	flush := func(end int) {
		if start >= 0 && end > start {
			out = append(out, strings.ToLower(string(rs[start:end])))
		}
		start = -1
	}
	for i, r := range rs {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			flush(i)
			continue
		}
		if start < 0 {
			start = i
			continue
		}
		prev := rs[i-1]
		switch {
		case unicode.IsLower(prev) && unicode.IsUpper(r):
			// getFile: boundary before F.
			flush(i)
			start = i
		case unicode.IsUpper(prev) && unicode.IsUpper(r) && i+1 < len(rs) && unicode.IsLower(rs[i+1]):
			// HTTPServer: boundary before S.
			flush(i)
			start = i
		case unicode.IsDigit(prev) != unicode.IsDigit(r):
			flush(i)
			start = i
		}
	}
	flush(len(rs))
	return out
}

// hasWord reports whether any token of words is in set.
func hasWord(words []string, set map[string]bool) (string, bool) {
	for _, w := range words {
		if set[w] {
			return w, true
		}
	}
	return "", false
}

func wordSet(ws ...string) map[string]bool {
	m := make(map[string]bool, len(ws))
	for _, w := range ws {
		m[w] = true
	}
	return m
}

// Glob reports whether name matches pattern as a whole. '*' matches any
// sequence of characters (including '/' and '_'), '?' any one character, and
// '\' escapes the next character. There is no implicit substring match: the
// pattern "get" matches only the name "get".
func Glob(pattern, name string) bool {
	p, n := []rune(pattern), []rune(name)
	// Iterative wildcard matching with backtracking to the last '*'.
	pi, ni, star, mark := 0, 0, -1, 0
	for ni < len(n) {
		if pi < len(p) {
			switch c := p[pi]; {
			case c == '*':
				star, mark = pi, ni
				pi++
				continue
			case c == '?':
				pi++
				ni++
				continue
			case c == '\\' && pi+1 < len(p):
				if p[pi+1] == n[ni] {
					pi += 2
					ni++
					continue
				}
			case c == n[ni]:
				pi++
				ni++
				continue
			}
		}
		if star < 0 {
			return false
		}
		pi, mark = star+1, mark+1
		ni = mark
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// validGlob reports whether a pattern is well formed (no dangling escape).
func validGlob(p string) bool {
	esc := false
	for _, r := range p {
		if esc {
			esc = false
			continue
		}
		if r == '\\' {
			esc = true
		}
	}
	return !esc
}
