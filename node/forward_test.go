package node

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestPlanForwardAccept(t *testing.T) {
	pool := pfx("10.244.0.0/16")
	other := pfx("10.99.0.0/16")
	specs := ForwardAcceptSpecs(pool)
	rule := func(backend string, spec []string) ForwardRule { return ForwardRule{Backend: backend, Spec: spec} }
	both := func(backend string) []ForwardRule {
		return []ForwardRule{rule(backend, specs[0]), rule(backend, specs[1])}
	}
	for _, c := range []struct {
		name      string
		pool      netip.Prefix
		chains    []ForwardChain
		insert    []ForwardRule
		del       []ForwardRule
		accepting []bool
	}{
		{name: "no filter table: nothing", pool: pool},
		{name: "policy accept, no rules of ours: nothing", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "ACCEPT"}}, accepting: []bool{false}},
		{name: "policy drop: both rules", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "DROP"}},
			insert: both(BackendNFT), accepting: []bool{true}},
		{name: "policy drop with both rules: nothing", pool: pool,
			chains:    []ForwardChain{{Backend: BackendNFT, Policy: "DROP", Ours: both(BackendNFT)}},
			accepting: []bool{true}},
		{name: "one rule deleted by hand: put back", pool: pool,
			chains: []ForwardChain{{Backend: BackendLegacy, Policy: "DROP", Ours: both(BackendLegacy)[1:]}},
			insert: both(BackendLegacy)[:1], accepting: []bool{true}},
		{name: "policy back to accept: ours go", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "ACCEPT", Ours: both(BackendNFT)}},
			del:    both(BackendNFT), accepting: []bool{false}},
		{name: "another pool's rules are replaced", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "DROP", Ours: []ForwardRule{rule(BackendNFT, ForwardAcceptSpecs(other)[0])}}},
			insert: both(BackendNFT), del: []ForwardRule{rule(BackendNFT, ForwardAcceptSpecs(other)[0])}, accepting: []bool{true}},
		{name: "a rule of ours twice: one goes", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "DROP", Ours: append(both(BackendNFT), rule(BackendNFT, specs[0]))}},
			del:    []ForwardRule{rule(BackendNFT, specs[0])}, accepting: []bool{true}},
		{name: "both backends drop", pool: pool,
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "DROP"}, {Backend: BackendLegacy, Policy: "DROP"}},
			insert: append(both(BackendNFT), both(BackendLegacy)...), accepting: []bool{true, true}},
		{name: "legacy table without its binary: left alone", pool: pool,
			chains:    []ForwardChain{{Backend: BackendNFT, Policy: "DROP"}, {Backend: BackendLegacy, Unhandled: "no binary"}},
			insert:    both(BackendNFT),
			accepting: []bool{true, false}},
		{name: "no pool: nothing accepted, ours go",
			chains: []ForwardChain{{Backend: BackendNFT, Policy: "DROP", Ours: both(BackendNFT)}},
			del:    both(BackendNFT), accepting: []bool{false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			insert, del, verdicts := PlanForwardAccept(c.pool, c.chains)
			eq := func(a, b []ForwardRule) bool {
				return slices.EqualFunc(a, b, func(x, y ForwardRule) bool { return x.Backend == y.Backend && slices.Equal(x.Spec, y.Spec) })
			}
			if !eq(insert, c.insert) {
				t.Errorf("insert = %v, want %v", insert, c.insert)
			}
			if !eq(del, c.del) {
				t.Errorf("delete = %v, want %v", del, c.del)
			}
			var accepting []bool
			for _, v := range verdicts {
				accepting = append(accepting, v.Accepting)
			}
			if !slices.Equal(accepting, c.accepting) {
				t.Errorf("accepting = %v, want %v", accepting, c.accepting)
			}
		})
	}
}

func TestParseForwardChain(t *testing.T) {
	// As iptables-nft 1.8.9 prints it, with Docker's rules around ours.
	out := strings.Join([]string{
		"-P FORWARD DROP",
		`-A FORWARD -s 10.244.0.0/16 -m comment --comment "grapevine-accept-src-10.244.0.0/16" -j ACCEPT`,
		`-A FORWARD -d 10.244.0.0/16 -m comment --comment "grapevine-accept-dst-10.244.0.0/16" -j ACCEPT`,
		"-A FORWARD -j DOCKER-USER",
		`-A FORWARD -s 10.1.0.0/16 -m comment --comment "someone else's" -j ACCEPT`,
	}, "\n")
	c := ParseForwardChain(BackendNFT, out)
	if c.Policy != "DROP" || c.Backend != BackendNFT {
		t.Errorf("policy %q backend %q, want DROP %s", c.Policy, c.Backend, BackendNFT)
	}
	want := ForwardAcceptSpecs(pfx("10.244.0.0/16"))
	if len(c.Ours) != 2 || !slices.Equal(c.Ours[0].Spec, want[0]) || !slices.Equal(c.Ours[1].Spec, want[1]) {
		t.Errorf("ours = %v, want %v", c.Ours, want)
	}
}

// A Docker-style FORWARD policy of DROP: one pass puts the pool's accept
// rules at the head of the chain, a second changes nothing, and the rules
// go when the policy is back to ACCEPT. A host without a filter table gets
// none.
func TestReconcileForwardDrop(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	d := desired(peerB)
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if rules := k.ForwardRules(BackendNFT); rules != nil {
		t.Fatalf("no filter table, yet rules %v", rules)
	}
	k.SetForwardPolicy(BackendNFT, "DROP")
	k.InsertForwardRule(ForwardRule{Backend: BackendNFT, Spec: []string{"-j", "DOCKER-USER"}})
	r.RecheckForward()
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	want := append(ForwardAcceptSpecs(d.Pool), []string{"-j", "DOCKER-USER"})
	got := k.ForwardRules(BackendNFT)
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("rules %v, want %v", got, want)
	}
	if len(res.Forward) != 1 || !res.Forward[0].Accepting {
		t.Errorf("result's forward %v, want one accepting chain", res.Forward)
	}
	writes := k.Writes()
	r.RecheckForward()
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if k.Writes() != writes {
		t.Errorf("second pass wrote %d times", k.Writes()-writes)
	}
	k.SetForwardPolicy(BackendNFT, "ACCEPT")
	r.RecheckForward()
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if got := k.ForwardRules(BackendNFT); !slices.EqualFunc(got, [][]string{{"-j", "DOCKER-USER"}}, slices.Equal) {
		t.Errorf("after policy ACCEPT, rules %v, want only Docker's", got)
	}
}

// A FORWARD chain the agent cannot change (no iptables binary, say) is
// reported in the result and does not fail the pass: routes are still
// programmed, and the chain is not said to accept the pool.
func TestReconcileForwardErrorDoesNotFailThePass(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	k.SetForwardPolicy(BackendNFT, "DROP")
	k.InjectError(OpForward, netip.Prefix{}, errors.New("iptables-nft: not installed"))
	res, err := r.Reconcile(t.Context(), desired(peerB))
	if err != nil {
		t.Fatalf("pass failed: %v", err)
	}
	if !res.Programmed("b") || res.ForwardErr == nil {
		t.Errorf("peer b %q, forward error %v; want programmed and an error", res.Peers["b"], res.ForwardErr)
	}
	k.InjectError(OpForward, netip.Prefix{}, nil)
	k.SetForwardPolicy(BackendLegacy, "DROP")
	// Without the fault, both chains get the pool's rules.
	r.RecheckForward()
	res, _ = r.Reconcile(t.Context(), desired(peerB))
	if res.ForwardErr != nil || len(res.Forward) != 2 || !res.Forward[0].Accepting || !res.Forward[1].Accepting {
		t.Errorf("after the fault: forward %v, error %v; want both accepting", res.Forward, res.ForwardErr)
	}
}

// A pass reads the FORWARD chains only when due: on the first pass, after
// RecheckForward (the agent's resync tick) and for a new pool. In between
// a pass leaves them alone and reports the last sync's outcome.
func TestReconcileForwardOnlyWhenDue(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	d := desired(peerB)
	k.SetForwardPolicy(BackendNFT, "DROP")
	pass := func() Result {
		t.Helper()
		res, err := r.Reconcile(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if pass(); k.ForwardReads() != 1 || len(k.ForwardRules(BackendNFT)) != 2 {
		t.Fatalf("first pass: %d reads, rules %v; want 1 read and the pool's two rules", k.ForwardReads(), k.ForwardRules(BackendNFT))
	}
	k.SetForwardPolicy(BackendNFT, "ACCEPT")
	for range 3 {
		res := pass()
		if len(res.Forward) != 1 || !res.Forward[0].Accepting {
			t.Errorf("a normal pass reports forward %v, want the last sync's (accepting)", res.Forward)
		}
	}
	if k.ForwardReads() != 1 || len(k.ForwardRules(BackendNFT)) != 2 {
		t.Errorf("normal passes: %d reads, rules %v; want the chains untouched", k.ForwardReads(), k.ForwardRules(BackendNFT))
	}
	r.RecheckForward()
	if res := pass(); k.ForwardReads() != 2 || len(k.ForwardRules(BackendNFT)) != 0 || res.Forward[0].Accepting {
		t.Errorf("after RecheckForward: %d reads, rules %v, forward %v; want a read and the rules gone", k.ForwardReads(), k.ForwardRules(BackendNFT), res.Forward)
	}
	k.SetForwardPolicy(BackendNFT, "DROP")
	d.Pool = pfx("10.240.0.0/12") // still holds the block
	if pass(); k.ForwardReads() != 3 || len(k.ForwardRules(BackendNFT)) != 2 {
		t.Errorf("new pool: %d reads, rules %v; want a read and the new pool's rules", k.ForwardReads(), k.ForwardRules(BackendNFT))
	}
}
