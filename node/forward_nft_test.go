package node

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"

	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// Each accept rule reads back as the spec it was built from, in the
// shape iptables-nft 1.8.9 writes for the prefix: a shorter load and no
// mask for a prefix of whole bytes.
func TestNFTForwardRuleRoundTrip(t *testing.T) {
	for _, c := range []struct {
		pool    string
		loadLen uint32
		masked  bool
	}{
		{"10.244.0.0/16", 2, false},
		{"10.0.0.0/8", 1, false},
		{"10.244.0.0/15", 4, true},
		{"10.244.2.0/23", 4, true},
		{"10.244.2.7/32", 4, false},
	} {
		for _, spec := range ForwardAcceptSpecs(pfx(c.pool)) {
			exprs, udata, err := nftForwardRule(spec)
			if err != nil {
				t.Fatalf("%v: %v", spec, err)
			}
			if pl := exprs[0].(*expr.Payload); pl.Len != c.loadLen {
				t.Errorf("%v: loads %d bytes, want %d", spec, pl.Len, c.loadLen)
			}
			if _, masked := exprs[1].(*expr.Bitwise); masked != c.masked {
				t.Errorf("%v: masked %v, want %v", spec, masked, c.masked)
			}
			got, ours := nftForwardSpec(exprs, udata)
			if !ours || !slices.Equal(got, spec) {
				t.Errorf("%v read back as %v (ours %v)", spec, got, ours)
			}
		}
	}
}

func TestNFTForwardSpec(t *testing.T) {
	spec := ForwardAcceptSpecs(pfx("10.244.0.0/16"))[0]
	exprs, udata, err := nftForwardRule(spec)
	if err != nil {
		t.Fatal(err)
	}
	comment := spec[5]
	xtComment := make(xt.Unknown, 256)
	copy(xtComment, comment)
	withVerdict := func(kind expr.VerdictKind) []expr.Any {
		e := slices.Clone(exprs)
		e[len(e)-1] = &expr.Verdict{Kind: kind}
		return e
	}
	odd := []string{"-m", "comment", "--comment", comment}
	for _, c := range []struct {
		name  string
		exprs []expr.Any
		udata []byte
		spec  []string
		ours  bool
	}{
		{"no comment: not ours", exprs, nil, nil, false},
		{"someone else's comment: not ours", exprs, userdata.AppendString(nil, userdata.TypeComment, "docker"), nil, false},
		{"our comment on a drop: ours, odd", withVerdict(expr.VerdictDrop), udata, odd, true},
		{"our comment on no match: ours, odd", exprs[len(exprs)-2:], udata, odd, true},
		{"as iptables-nft writes it, comment match and all", slices.Insert(slices.Clone(exprs), 2, expr.Any(&expr.Match{Name: "comment", Info: &xtComment})), nil, spec, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ours := nftForwardSpec(c.exprs, c.udata)
			if ours != c.ours || !slices.Equal(got, c.spec) {
				t.Errorf("got %v ours %v, want %v ours %v", got, ours, c.spec, c.ours)
			}
		})
	}
	for _, bad := range [][]string{
		{"-s", "10.244.0.0/16", "-j", "ACCEPT"},
		{"-i", "eth0", "-m", "comment", "--comment", comment, "-j", "ACCEPT"},
		{"-s", "10.244.0.1/16", "-m", "comment", "--comment", comment, "-j", "ACCEPT"},
		{"-s", "0.0.0.0/0", "-m", "comment", "--comment", comment, "-j", "ACCEPT"},
		{"-s", "fd00::/64", "-m", "comment", "--comment", comment, "-j", "ACCEPT"},
	} {
		if _, _, err := nftForwardRule(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// needIptablesNFT skips a test that checks the agent's rules against the
// iptables-nft binary when it is not installed, and fails it in CI.
func needIptablesNFT(t *testing.T) {
	t.Helper()
	testneeds.Commands(t, "apt-get install iptables", BackendNFT)
}

// iptablesNFT runs iptables-nft in ns with a lock file of the test's;
// stdout and stderr are returned apart: a warning goes to stderr.
func (n *testNS) iptablesNFT(t *testing.T, args ...string) (string, string) {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), "ip", append([]string{"netns", "exec", n.name, BackendNFT}, args...)...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(t.TempDir(), "xtables.lock"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("iptables-nft %v: %v: %s", args, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// forwardRulesOf lists the rules of "ip filter FORWARD" in ns.
func forwardRulesOf(t *testing.T, conn *nftables.Conn) []*nftables.Rule {
	t.Helper()
	chain, err := nftFilterForward(conn)
	if err != nil || chain == nil {
		t.Fatalf("no ip filter FORWARD: %v", err)
	}
	rules, err := conn.GetRules(chain.Table, chain)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// TestForwardRulesReadByIptablesNFT: in a namespace where iptables-nft
// set a FORWARD policy of DROP (as Docker does), a pass writes the pool's
// accept rules over netlink; iptables-nft lists them as it lists its own,
// with no warning, their expressions are the ones iptables-nft writes for
// the same -s and -d, and once the policy is ACCEPT again the next pass
// finds them by their comment and removes them.
func TestForwardRulesReadByIptablesNFT(t *testing.T) {
	needIptablesNFT(t)
	ns := newTestNS(t)
	k := ns.kernel(t)
	pool := pfx("10.244.0.0/15")
	ns.iptablesNFT(t, "-P", "FORWARD", "DROP")
	ns.iptablesNFT(t, "-A", "FORWARD", "-j", "DROP")
	r := NewReconciler(k, nil, nil)
	verdicts, err := r.syncForwardAccept(pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(verdicts) != 1 || !verdicts[0].Accepting || verdicts[0].Backend != BackendNFT {
		t.Fatalf("verdicts %v, want iptables-nft accepting", verdicts)
	}
	out, warnings := ns.iptablesNFT(t, "-S", "FORWARD")
	if warnings != "" {
		t.Errorf("iptables-nft -S FORWARD warns: %s", warnings)
	}
	want := "-P FORWARD DROP\n" +
		`-A FORWARD -s 10.244.0.0/15 -m comment --comment "grapevine-accept-src-10.244.0.0/15" -j ACCEPT` + "\n" +
		`-A FORWARD -d 10.244.0.0/15 -m comment --comment "grapevine-accept-dst-10.244.0.0/15" -j ACCEPT` + "\n" +
		"-A FORWARD -j DROP\n"
	if out != want {
		t.Errorf("iptables-nft -S FORWARD:\n%s\nwant:\n%s", out, want)
	}

	// iptables-nft's own rules for the same addresses, at the end.
	ns.iptablesNFT(t, "-A", "FORWARD", "-s", pool.String(), "-j", "ACCEPT")
	ns.iptablesNFT(t, "-A", "FORWARD", "-d", pool.String(), "-j", "ACCEPT")
	rules := forwardRulesOf(t, ns.nft(t))
	if len(rules) != 5 {
		t.Fatalf("%d rules, want 5", len(rules))
	}
	for i, theirs := range rules[3:] {
		if ours := rules[i]; !reflect.DeepEqual(ours.Exprs, theirs.Exprs) {
			t.Errorf("rule %d's expressions differ from iptables-nft's:\nours   %#v\ntheirs %#v", i, ours.Exprs, theirs.Exprs)
		}
	}
	if _, err := r.syncForwardAccept(pool); err != nil {
		t.Fatal(err)
	}
	if n := len(forwardRulesOf(t, ns.nft(t))); n != 5 {
		t.Errorf("a second pass left %d rules, want 5 (nothing written)", n)
	}

	ns.iptablesNFT(t, "-P", "FORWARD", "ACCEPT")
	if _, err := r.syncForwardAccept(pool); err != nil {
		t.Fatal(err)
	}
	out, _ = ns.iptablesNFT(t, "-S", "FORWARD")
	if strings.Contains(out, forwardCommentPrefix) || strings.Count(out, "-A FORWARD") != 3 {
		t.Errorf("after policy ACCEPT, FORWARD is:\n%s\nwant only the three rules not the agent's", out)
	}
}

// TestForwardChainsLegacy: iptables-legacy's FORWARD chain with policy
// DROP in a test namespace gets the pool's rules through the
// iptables-legacy binary; without the binary on PATH (the agent's image)
// the chain is listed as not handled, with the reason, and nothing is
// planned for it.
func TestForwardChainsLegacy(t *testing.T) {
	testneeds.Commands(t, "apt-get install iptables", BackendLegacy)
	ns := newTestNS(t)
	// The binaries' lock is the test's, not the machine's
	// /run/xtables.lock.
	t.Setenv("XTABLES_LOCKFILE", filepath.Join(t.TempDir(), "xtables.lock"))
	legacy := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name, BackendLegacy}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-legacy %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	legacy("-P", "FORWARD", "DROP")
	k := ns.kernel(t)
	pool := pfx("10.244.0.0/16")
	verdicts, err := NewReconciler(k, nil, nil).syncForwardAccept(pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(verdicts) != 1 || verdicts[0].Backend != BackendLegacy || !verdicts[0].Accepting {
		t.Fatalf("verdicts %v, want iptables-legacy accepting", verdicts)
	}
	if out := legacy("-S", "FORWARD"); strings.Count(out, forwardCommentPrefix) != 2 {
		t.Errorf("iptables-legacy -S FORWARD lacks the agent's two rules:\n%s", out)
	}

	t.Setenv("PATH", t.TempDir())
	chains, err := k.ForwardChains()
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 1 || chains[0].Backend != BackendLegacy || !strings.Contains(chains[0].Unhandled, "no iptables-legacy binary") {
		t.Fatalf("without the binary: chains %+v, want iptables-legacy not handled", chains)
	}
	insert, del, verdicts := PlanForwardAccept(pool, chains)
	if len(insert)+len(del) != 0 || len(verdicts) != 1 || !strings.HasPrefix(verdicts[0].String(), "iptables-legacy filter FORWARD not handled: ") {
		t.Errorf("without the binary: insert %v, delete %v, verdicts %v; want nothing planned and one not handled", insert, del, verdicts)
	}
}

// TestWatchSeesForwardPolicy: Docker setting iptables-nft's FORWARD policy
// to DROP, or a rule added to that chain, wakes the watch, so the agent
// puts its accept rules in at once instead of at its next resync.
func TestWatchSeesForwardPolicy(t *testing.T) {
	needIptablesNFT(t)
	ns := newTestNS(t)
	k := ns.kernel(t)
	ns.iptablesNFT(t, "-S") // creates table ip filter and its chains
	for _, change := range [][]string{
		{"-P", "FORWARD", "DROP"},
		{"-A", "FORWARD", "-j", "DROP"},
	} {
		t.Run(strings.Join(change, " "), func(t *testing.T) {
			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			changes := k.WatchRoutes(ctx)
			ns.iptablesNFT(t, change...)
			waitFor(t, changes, "a notification for "+strings.Join(change, " "))
		})
	}
}
