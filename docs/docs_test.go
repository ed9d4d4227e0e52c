// Package docs holds the operator documentation. Its tests keep the
// documents honest against the code: every setting, flag and command they
// name exists in cmd/grapevine, and every link between them resolves.
package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// operatorDocs are the documents these tests cover; design.md and cni.md
// have other owners and their own reviews.
var operatorDocs = []string{
	"architecture.md",
	"bare-metal.md",
	"comparison.md",
	"kubernetes.md",
	"operations.md",
	"troubleshooting.md",
	"systemd/grapevine.service",
	"kubernetes/grapevine.yaml",
}

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// cliSpec is what the grapevine binary accepts: its commands and, per
// command, its flags (long names and aliases).
type cliSpec map[string]map[string]bool

// parseCLI reads the urfave/cli declarations in cmd/grapevine: every
// cli.Command literal with its Name, and the Name and Aliases of every flag
// literal inside it. Flags built by helper functions (runDirFlag) are found
// by following the call into the helper's body.
func parseCLI(t *testing.T) cliSpec {
	t.Helper()
	paths, err := filepath.Glob("../cmd/grapevine/*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	funcs := map[string]*ast.FuncDecl{}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil {
				funcs[fd.Name.Name] = fd
			}
		}
	}

	var flagsIn func(n ast.Node, into map[string]bool, seen map[string]bool)
	flagsIn = func(n ast.Node, into map[string]bool, seen map[string]bool) {
		ast.Inspect(n, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && funcs[id.Name] != nil && !seen[id.Name] {
					seen[id.Name] = true
					flagsIn(funcs[id.Name], into, seen)
				}
			case *ast.CompositeLit:
				if sel, ok := n.Type.(*ast.SelectorExpr); ok && strings.HasSuffix(sel.Sel.Name, "Flag") {
					for _, name := range stringFields(n, "Name", "Aliases") {
						into[name] = true
					}
				}
			}
			return true
		})
	}

	spec := cliSpec{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Command" {
				return true
			}
			names := stringFields(lit, "Name")
			if len(names) != 1 {
				return true
			}
			flags := map[string]bool{}
			for _, el := range lit.Elts {
				if kv, ok := el.(*ast.KeyValueExpr); ok && kv.Key.(*ast.Ident).Name == "Flags" {
					flagsIn(kv.Value, flags, map[string]bool{})
				}
			}
			spec[names[0]] = flags
			return true
		})
	}
	if len(spec["agent"]) == 0 {
		t.Fatalf("found no agent command with flags in cmd/grapevine: %v", spec)
	}
	return spec
}

// stringFields returns the string literals of the named fields of lit,
// whether a field holds one string or a slice of them.
func stringFields(lit *ast.CompositeLit, fields ...string) []string {
	var out []string
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, ok := kv.Key.(*ast.Ident)
		if !ok || !contains(fields, key.Name) {
			continue
		}
		ast.Inspect(kv.Value, func(n ast.Node) bool {
			if s, ok := n.(*ast.BasicLit); ok && s.Kind == token.STRING {
				out = append(out, strings.Trim(s.Value, "\"`"))
			}
			return true
		})
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// envName is the environment variable the agent reads for a flag.
func envName(flag string) string {
	return "GRAPEVINE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// TestSettingsExist: every GRAPEVINE_* variable the documents tell an
// operator to set is read by a flag of `grapevine agent`.
func TestSettingsExist(t *testing.T) {
	agent := parseCLI(t)["agent"]
	known := map[string]bool{}
	for f := range agent {
		known[envName(f)] = true
	}
	re := regexp.MustCompile(`GRAPEVINE_[A-Z0-9_]+`)
	for _, doc := range operatorDocs {
		for _, v := range re.FindAllString(readDoc(t, doc), -1) {
			if !known[v] {
				t.Errorf("%s names %s, which no flag of `grapevine agent` reads", doc, v)
			}
		}
	}
}

// TestFlagsExist: every flag the documents quote on its own (`--pool`) is a
// flag of `grapevine agent`, and every `grapevine CMD --flag` they show is a
// command with that flag.
func TestFlagsExist(t *testing.T) {
	spec := parseCLI(t)
	quoted := regexp.MustCompile("`--([a-z][a-z0-9-]*)")
	invocation := regexp.MustCompile(`(?m)(?:^|[\s(])grapevine ([a-z]+)((?: +[^\s|;&)#]+)*)`)
	flag := regexp.MustCompile(`(?:^|\s)--?([a-z][a-z0-9-]*)`)
	for _, doc := range operatorDocs {
		text := readDoc(t, doc)
		for _, m := range quoted.FindAllStringSubmatch(text, -1) {
			if !spec["agent"][m[1]] {
				t.Errorf("%s quotes --%s, which is not a flag of `grapevine agent`", doc, m[1])
			}
		}
		for _, m := range invocation.FindAllStringSubmatch(text, -1) {
			cmd, args := m[1], m[2]
			flags, ok := spec[cmd]
			if !ok {
				t.Errorf("%s shows `grapevine %s`, which is not a command", doc, cmd)
				continue
			}
			for _, f := range flag.FindAllStringSubmatch(args, -1) {
				if !flags[f[1]] {
					t.Errorf("%s shows `grapevine %s ... --%s`, which that command does not take", doc, cmd, f[1])
				}
			}
		}
	}
}

// TestLinksResolve: every relative link between the documents points at a
// file that exists, and at a heading that exists when it names one.
func TestLinksResolve(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, doc := range operatorDocs {
		if !strings.HasSuffix(doc, ".md") {
			continue
		}
		for _, m := range link.FindAllStringSubmatch(readDoc(t, doc), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := doc
			if file != "" {
				path = filepath.Join(filepath.Dir(doc), file)
			}
			body, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s links to %s: %v", doc, target, err)
				continue
			}
			if anchor != "" && !headingAnchors(string(body))[anchor] {
				t.Errorf("%s links to %s: %s has no heading with anchor #%s", doc, target, path, anchor)
			}
		}
	}
}

// headingAnchors returns the anchors a Markdown renderer in the GitHub style
// derives from the headings of a document: lower case, punctuation other
// than '-' and '_' dropped, spaces turned into '-'.
func headingAnchors(md string) map[string]bool {
	anchors := map[string]bool{}
	inCode := false
	for line := range strings.Lines(md) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		anchors[b.String()] = true
	}
	return anchors
}
