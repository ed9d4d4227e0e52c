// Package docs holds the operator documentation. Its tests keep the
// documents honest against the code: every setting, flag and command they
// name exists in cmd/grapevine, and every link between them resolves.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/docs/internal/agentcli"
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

// parseCLI reads what cmd/grapevine accepts: command -> its flags.
func parseCLI(t *testing.T) map[string]map[string]bool {
	t.Helper()
	spec, err := agentcli.Parse("../cmd/grapevine")
	if err != nil {
		t.Fatal(err)
	}
	return spec.Commands
}

// parsePolicyCLI reads the flags of cmd/grapevine-policy.
func parsePolicyCLI(t *testing.T) map[string]bool {
	t.Helper()
	spec, err := agentcli.ParseApp("../cmd/grapevine-policy")
	if err != nil {
		t.Fatal(err)
	}
	return spec.Commands[""]
}

// TestSettingsExist: every GRAPEVINE_* variable the documents tell an
// operator to set is read by a flag of `grapevine agent` or of
// grapevine-policy.
func TestSettingsExist(t *testing.T) {
	agent := parseCLI(t)["agent"]
	known := map[string]bool{}
	for f := range agent {
		known[agentcli.EnvVar(f)] = true
	}
	for f := range parsePolicyCLI(t) {
		known[agentcli.EnvVar(f)] = true
	}
	re := regexp.MustCompile(`GRAPEVINE_[A-Z0-9_]+`)
	for _, doc := range operatorDocs {
		for _, v := range re.FindAllString(readDoc(t, doc), -1) {
			if !known[v] {
				t.Errorf("%s names %s, which no flag of `grapevine agent` or grapevine-policy reads", doc, v)
			}
		}
	}
}

// TestFlagsExist: every flag the documents quote on its own (`--pool`) is a
// flag of `grapevine agent` or of grapevine-policy, every `grapevine CMD
// --flag` they show is a command with that flag, and every
// `grapevine-policy --flag` a flag of grapevine-policy.
func TestFlagsExist(t *testing.T) {
	spec := parseCLI(t)
	policy := parsePolicyCLI(t)
	policyInvocation := regexp.MustCompile(`(?m)(?:^|[\s(])grapevine-policy((?: +--[^\s|;&)#]+)*)`)
	quoted := regexp.MustCompile("`--([a-z][a-z0-9-]*)")
	// Command names may have hyphens (install-cni).
	invocation := regexp.MustCompile(`(?m)(?:^|[\s(])grapevine ([a-z]+(?:-[a-z]+)*)((?: +[^\s|;&)#]+)*)`)
	flag := regexp.MustCompile(`(?:^|\s)--?([a-z][a-z0-9-]*)`)
	for _, doc := range operatorDocs {
		text := readDoc(t, doc)
		for _, m := range quoted.FindAllStringSubmatch(text, -1) {
			if !spec["agent"][m[1]] && !policy[m[1]] {
				t.Errorf("%s quotes --%s, which is not a flag of `grapevine agent` or grapevine-policy", doc, m[1])
			}
		}
		for _, m := range policyInvocation.FindAllStringSubmatch(text, -1) {
			for _, f := range flag.FindAllStringSubmatch(m[1], -1) {
				if !policy[f[1]] {
					t.Errorf("%s shows `grapevine-policy ... --%s`, which grapevine-policy does not take", doc, f[1])
				}
			}
		}
		for _, m := range invocation.FindAllStringSubmatch(text, -1) {
			cmd, args := m[1], m[2]
			flags, ok := spec[cmd]
			if !ok {
				t.Errorf("%s shows `grapevine %s`, which is not a command", doc, cmd)
				continue
			}
			// A command without flags of its own groups subcommands
			// (grapevine ledger recover): check the subcommand's.
			if fields := strings.Fields(args); len(flags) == 0 && len(fields) > 0 {
				if sub, ok := spec[fields[0]]; ok {
					flags = sub
				}
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
