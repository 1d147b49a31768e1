package mcpgw

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportedNamesHaveDocComments checks the house rule in the gateway's
// packages: every exported top-level name and method has a doc comment
// that starts with its name (a name in a parenthesized group may share
// the group's comment).
func TestExportedNamesHaveDocComments(t *testing.T) {
	for _, dir := range []string{".", "config", filepath.Join("..", "approval")} {
		fset := token.NewFileSet()
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			check := func(pos token.Pos, ident string, doc *ast.CommentGroup) {
				if !ast.IsExported(ident) {
					return
				}
				text := ""
				if doc != nil {
					text = doc.Text()
				}
				first := strings.Fields(text)
				ok := len(first) > 0 && (first[0] == ident || len(first) > 1 && (first[0] == "A" || first[0] == "An" || first[0] == "The") && first[1] == ident)
				if !ok {
					t.Errorf("%s: %s: no doc comment starting with its name", fset.Position(pos), ident)
				}
			}
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if d.Recv != nil {
						// Methods of unexported types are not API.
						recv := d.Recv.List[0].Type
						if s, ok := recv.(*ast.StarExpr); ok {
							recv = s.X
						}
						if id, ok := recv.(*ast.Ident); !ok || !ast.IsExported(id.Name) {
							continue
						}
					}
					check(d.Pos(), d.Name.Name, d.Doc)
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.TypeSpec:
							if s.Doc == nil && d.Doc != nil && d.Lparen.IsValid() {
								continue // documented by its group
							}
							doc := s.Doc
							if doc == nil {
								doc = d.Doc
							}
							check(s.Pos(), s.Name.Name, doc)
						case *ast.ValueSpec:
							if s.Doc != nil || d.Doc != nil && d.Lparen.IsValid() {
								continue // documented alone or by its group
							}
							for _, n := range s.Names {
								check(n.Pos(), n.Name, d.Doc)
							}
						}
					}
				}
			}
		}
	}
}
