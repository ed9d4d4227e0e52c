// Package agentcli reads what the grapevine binary accepts from its source in
// cmd/grapevine: the commands, the flags of each, and the package's
// constants; and likewise grapevine-policy's flags (ParseApp).
// The documentation tests check the docs and manifests against it; reading
// the source (not running the binary) keeps them free of a build step.
package agentcli

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strings"
)

// Spec is what cmd/grapevine declares.
type Spec struct {
	// Commands maps each command to its flags' long names and aliases;
	// "" holds the app's own flags, for a binary without commands.
	Commands map[string]map[string]bool
	// Consts holds the package's string and integer constants, as their
	// literal text without quotes.
	Consts map[string]string
}

// EnvVar is the environment variable the agent reads for a flag.
func EnvVar(flag string) string {
	return "GRAPEVINE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Parse reads the urfave/cli declarations in dir: every cli.Command literal
// with its Name, and the Name and Aliases of every flag literal inside it.
// Flags built by helper functions (runDirFlag) are found by following the
// call into the helper's body. The commands must include an agent with
// flags.
func Parse(dir string) (Spec, error) {
	spec, err := parse(dir)
	if err == nil && len(spec.Commands["agent"]) == 0 {
		err = fmt.Errorf("found no agent command with flags in %s: %v", dir, spec.Commands)
	}
	return spec, err
}

// ParseApp reads a binary without commands, whose cli.App literal holds
// the flags (cmd/grapevine-policy): Commands[""] has them.
func ParseApp(dir string) (Spec, error) {
	spec, err := parse(dir)
	if err == nil && len(spec.Commands[""]) == 0 {
		err = fmt.Errorf("found no cli.App with flags in %s", dir)
	}
	return spec, err
}

func parse(dir string) (Spec, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return Spec{}, err
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
			return Spec{}, err
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

	spec := Spec{Commands: map[string]map[string]bool{}, Consts: map[string]string{}}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GenDecl:
				if n.Tok == token.CONST {
					addConsts(n, spec.Consts)
				}
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Command" && sel.Sel.Name != "App" {
					return true
				}
				names := stringFields(n, "Name")
				if sel.Sel.Name == "App" {
					// The app's own flags; its Name is the binary's.
					names = []string{""}
				}
				if len(names) != 1 {
					return true
				}
				flags := map[string]bool{}
				for _, el := range n.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok && kv.Key.(*ast.Ident).Name == "Flags" {
						flagsIn(kv.Value, flags, map[string]bool{})
					}
				}
				if len(flags) > 0 || sel.Sel.Name == "Command" {
					spec.Commands[names[0]] = flags
				}
			}
			return true
		})
	}
	return spec, nil
}

func addConsts(d *ast.GenDecl, into map[string]string) {
	for _, s := range d.Specs {
		vs := s.(*ast.ValueSpec)
		for i, name := range vs.Names {
			if i < len(vs.Values) {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok {
					into[name.Name] = strings.Trim(lit.Value, "\"`")
				}
			}
		}
	}
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
		if !ok || !slices.Contains(fields, key.Name) {
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
