package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// TestDoctor breaks one thing at a time on one host of a 3-host lab and
// checks that `grapevine doctor` there exits nonzero naming the check, and
// passes again once the thing is put back. Every change is inside the
// lab's namespaces. The agents' full resync is set far off, but a sysctl
// the agent owns (ip_forward, a pod veth's proxy_arp) is still put back by
// the next pass any change in its view starts, which may come before
// doctor reads it: such a case breaks it again until doctor sees it.
func TestDoctor(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3, AgentArgs: []string{"--resync-interval=10m"}})
	ctx := timeout(t, 4*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	h2Block := statuses[h2.Name].Block
	pod := addPods(t, ctx, h3, 1)[0]
	veth, err := pod.HostVeth()
	if err != nil {
		t.Fatal(err)
	}
	proxyARP := "net.ipv4.conf." + veth + ".proxy_arp"

	// A healthy lab: doctor passes on every host.
	for _, h := range l.Hosts() {
		took := waitDoctorPasses(t, h)
		t.Logf("doctor on healthy %s: exit 0 in %v", h.Name, took.Round(time.Millisecond))
	}

	var stopSkew func() error
	run := func(h *lab.Host, name string, args ...string) func() error {
		return func() error {
			_, err := h.Run(ctx, name, args...)
			return err
		}
	}
	cases := []struct {
		name    string
		host    *lab.Host
		check   string
		subject string
		breakIt func() error
		restore func() error
		// agentUndoes says the agent puts the thing back at its next pass.
		agentUndoes bool
	}{
		{"ip_forward off", h2, doctor.CheckIPForward, "",
			run(h2, "sysctl", "-w", "net.ipv4.ip_forward=0"),
			run(h2, "sysctl", "-w", "net.ipv4.ip_forward=1"), true},
		// A route deleted by itself is back within a pass (the agent
		// watches its routes), so the hand-made route that replaces it
		// keeps its slot: the agent never overwrites a route of another
		// protocol. Putting back the agent's own route ends the case.
		{"peer route replaced by hand", h1, doctor.CheckPeerRoute, h2.Name,
			run(h1, "ip", "route", "replace", h2Block.String(), "via", h3.IP.String(), "dev", "em1", "proto", "static"),
			run(h1, "ip", "route", "replace", h2Block.String(), "via", h2.IP.String(), "dev", "em1", "proto", fmt.Sprint(routeProto)), false},
		{"proxy_arp of a pod veth off", h3, doctor.CheckProxyARP, veth,
			run(h3, "sysctl", "-w", proxyARP+"=0"),
			run(h3, "sysctl", "-w", proxyARP+"=1"), true},
		{"nftables forward chain with policy drop", h1, doctor.CheckForwardPolicy, "nftables inet gvtest chain forward",
			func() error { return forwardDropTable(h1, true) },
			func() error { return forwardDropTable(h1, false) }, false},
		// h2's link carries less than the pod MTU: h1's full-size
		// probes to h2 are lost on the way, small ones pass.
		{"h2's link MTU below the pod MTU", h1, doctor.CheckPathMTU, h2.Name,
			run(h2, "ip", "link", "set", "dev", "em1", "mtu", "1400"),
			run(h2, "ip", "link", "set", "dev", "em1", "mtu", "1500"), false},
		// The firewall is on h2, the finding on h1: its connect to h2's
		// ledger port goes unanswered.
		{"a firewall on h2 dropping TCP 7963", h1, doctor.CheckLedgerPort, h2.Name,
			func() error { return inputDropTable(h2, unix.IPPROTO_TCP, 7963, true) },
			func() error { return inputDropTable(h2, unix.IPPROTO_TCP, 7963, false) }, false},
		// h2 answers timestamp requests as a host whose clock is 10
		// minutes ahead (the machine's clock is not touched).
		{"h2's clock 10 minutes ahead", h1, doctor.CheckClock, h2.Name,
			func() (err error) { stopSkew, err = skewClock(h2, 10*time.Minute); return err },
			func() error { return stopSkew() }, false},
	}
	for _, c := range cases {
		err := poll.Until(ctx, "doctor on "+c.host.Name+" to see "+c.name, 100*time.Millisecond, func() error {
			if err := c.breakIt(); err != nil {
				t.Fatalf("%s: break: %v", c.name, err)
			}
			out, code, err := c.host.Doctor(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var fs []doctor.Finding
			if err := json.Unmarshal(out, &fs); err != nil {
				t.Fatalf("%s: doctor's output is not JSON findings: %v\n%s", c.name, err, out)
			}
			failed := slices.ContainsFunc(fs, func(f doctor.Finding) bool {
				return f.Severity == doctor.Fail && f.Check == c.check && f.Subject == c.subject
			})
			switch {
			case failed && code == 0:
				t.Fatalf("%s on %s: doctor found a failed %s %s but exited 0:\n%s", c.name, c.host.Name, c.check, c.subject, out)
			case !failed && !c.agentUndoes:
				t.Fatalf("%s on %s: doctor exited %d; want nonzero and a failed %s %s:\n%s", c.name, c.host.Name, code, c.check, c.subject, out)
			case !failed:
				return fmt.Errorf("the agent put it back before doctor looked:\n%s", out)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.restore(); err != nil {
			t.Fatalf("%s: restore: %v", c.name, err)
		}
		waitDoctorPasses(t, c.host)
	}
}

// waitDoctorPasses polls doctor on h until it exits 0 with every check
// passed, not even a warning, and returns how long that run took.
func waitDoctorPasses(t *testing.T, h *lab.Host) time.Duration {
	t.Helper()
	ctx := timeout(t, time.Minute)
	var took time.Duration
	err := poll.Until(ctx, "doctor on "+h.Name+" to pass", 100*time.Millisecond, func() error {
		start := time.Now()
		out, code, err := h.Doctor(ctx)
		took = time.Since(start)
		if err != nil {
			return err
		}
		var fs []doctor.Finding
		if err := json.Unmarshal(out, &fs); err != nil {
			return fmt.Errorf("doctor's output is not JSON findings: %w\n%s", err, out)
		}
		notOK := slices.ContainsFunc(fs, func(f doctor.Finding) bool { return f.Severity != doctor.OK })
		if code != 0 || notOK {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// inputDropTable adds (or deletes) table inet gvtest-input in h's
// namespace, whose input chain drops what comes for port of proto
// (unix.IPPROTO_TCP, unix.IPPROTO_UDP): a host firewall closing one of
// Grapevine's ports.
func inputDropTable(h *lab.Host, proto byte, port uint16, add bool) error {
	if !add {
		return h.SetFilterTable("gvtest-input", nil)
	}
	return h.SetFilterTable("gvtest-input", &lab.FilterChain{Name: "input", Hook: nftables.ChainHookInput, Policy: nftables.ChainPolicyAccept, Rules: [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, // destination port
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}}})
}

// forwardDropTable adds (or deletes) table inet gvtest in h's namespace,
// with a base chain hooked at forward whose policy is drop: what Docker or
// a host firewall leaves behind.
func forwardDropTable(h *lab.Host, add bool) error {
	if !add {
		return h.SetFilterTable("gvtest", nil)
	}
	return h.SetFilterTable("gvtest", &lab.FilterChain{Name: "forward", Hook: nftables.ChainHookForward, Policy: nftables.ChainPolicyDrop})
}

// TestDoctorVXLAN: h1 reaches h3, behind a router, over VXLAN. Strict
// reverse-path filtering on h1's uplink fails doctor's rp-filter check
// there; a firewall on h3 dropping UDP 4789 fails its peer-vxlan check for
// h3, whose host still answers in the clear.
func TestDoctorVXLAN(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1})
	ctx := timeout(t, 2*time.Minute)
	h1, h3 := l.Host(1), l.Host(3)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h1)
	cases := []struct {
		name, check, subject string
		breakIt, restore     func() error
	}{
		{"strict rp_filter on h1's uplink", doctor.CheckRPFilter, "em1",
			func() error { _, err := h1.Run(ctx, "sysctl", "-w", "net.ipv4.conf.em1.rp_filter=1"); return err },
			func() error { _, err := h1.Run(ctx, "sysctl", "-w", "net.ipv4.conf.em1.rp_filter=2"); return err }},
		{"a firewall on h3 dropping UDP 4789", doctor.CheckVXLAN, h3.Name,
			func() error { return inputDropTable(h3, unix.IPPROTO_UDP, 4789, true) },
			func() error { return inputDropTable(h3, unix.IPPROTO_UDP, 4789, false) }},
	}
	for _, c := range cases {
		if err := c.breakIt(); err != nil {
			t.Fatalf("%s: break: %v", c.name, err)
		}
		out, code, err := h1.Doctor(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var fs []doctor.Finding
		if err := json.Unmarshal(out, &fs); err != nil {
			t.Fatalf("%s: doctor's output is not JSON findings: %v\n%s", c.name, err, out)
		}
		if code == 0 || !slices.ContainsFunc(fs, func(f doctor.Finding) bool {
			return f.Severity == doctor.Fail && f.Check == c.check && f.Subject == c.subject
		}) {
			t.Errorf("%s: doctor on h1 exited %d; want nonzero and a failed %s %s:\n%s", c.name, code, c.check, c.subject, out)
		}
		if err := c.restore(); err != nil {
			t.Fatalf("%s: restore: %v", c.name, err)
		}
		waitDoctorPasses(t, h1)
	}
}

// TestDoctorLegacyMasquerade: an iptables-legacy rule masquerading the
// whole pool (an old tool's, beside Grapevine's nftables table) makes
// doctor fail its iptables-legacy check; once the rule is deleted the
// empty legacy table is no finding. The rule is in h1's namespace; the
// xtables lock file is the lab's, not the machine's /run/xtables.lock.
func TestDoctorLegacyMasquerade(t *testing.T) {
	t.Parallel()
	testneeds.Commands(t, "apt-get install iptables", "iptables-legacy", "iptables-legacy-save")
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 2*time.Minute)
	h1 := l.Host(1)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h1)
	legacy := func(op string) error {
		cmd := h1.Command(ctx, "iptables-legacy", "-t", "nat", op, "POSTROUTING", "-s", podPool.String(), "-j", "MASQUERADE")
		cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(h1.Dir, "xtables.lock"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("iptables-legacy %s: %w: %s", op, err, out)
		}
		return nil
	}
	if err := legacy("-A"); err != nil {
		t.Fatal(err)
	}
	out, code, err := h1.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal(out, &fs); err != nil {
		t.Fatalf("doctor's output is not JSON findings: %v\n%s", err, out)
	}
	if code == 0 || !slices.ContainsFunc(fs, func(f doctor.Finding) bool {
		return f.Severity == doctor.Fail && f.Check == doctor.CheckLegacyIptables && f.Subject == "nat POSTROUTING"
	}) {
		t.Errorf("legacy masquerade of the pool: doctor exited %d; want nonzero and a failed %s:\n%s", code, doctor.CheckLegacyIptables, out)
	}
	if err := legacy("-D"); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h1)
}

// TestDoctorHostAddressGone: h2's address changes under its running agent
// (as a DHCP renewal might); doctor on h2 fails its host-address check,
// and passes again once the address is back and the agent has put back
// what the change flushed.
func TestDoctorHostAddressGone(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 3*time.Minute)
	h2 := l.Host(2)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h2)
	moved := netip.PrefixFrom(h2.IP.Next().Next().Next(), 24).String() // an unused address on the lab's LAN
	own := netip.PrefixFrom(h2.IP, 24).String()
	for _, args := range [][]string{{"addr", "del", own, "dev", "em1"}, {"addr", "add", moved, "dev", "em1"}} {
		if _, err := h2.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	out, code, err := h2.Doctor(ctx)
	for _, args := range [][]string{{"addr", "del", moved, "dev", "em1"}, {"addr", "add", own, "dev", "em1"}} {
		if _, err := h2.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal(out, &fs); err != nil {
		t.Fatalf("doctor's output is not JSON findings: %v\n%s", err, out)
	}
	if code == 0 || !slices.ContainsFunc(fs, func(f doctor.Finding) bool {
		return f.Severity == doctor.Fail && f.Check == doctor.CheckHostAddress && f.Subject == "em1"
	}) {
		t.Errorf("host address gone: doctor exited %d; want nonzero and a failed %s em1:\n%s", code, doctor.CheckHostAddress, out)
	}
	waitDoctorPasses(t, h2)
}

// TestDoctorAll: `grapevine doctor --all` on h1 prints every host's
// findings, each gathered on its own host (h2's and h3's over the ledger's
// connection): with IP forwarding off on h2 it exits nonzero, naming
// ip-forward under h2 only; once it is back, every host passes.
func TestDoctorAll(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3, AgentArgs: []string{"--resync-interval=10m"}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	run := func() ([]doctor.Summary, int) {
		t.Helper()
		out, code, err := h1.DoctorAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var all []doctor.Summary
		if err := json.Unmarshal(out, &all); err != nil {
			t.Fatalf("doctor --all's output is not JSON summaries: %v\n%s", err, out)
		}
		return all, code
	}
	err := poll.Until(ctx, "doctor --all to pass everywhere", 100*time.Millisecond, func() error {
		all, code := run()
		if code != 0 || len(all) != 3 {
			return fmt.Errorf("exit %d, %d hosts: %+v", code, len(all), all)
		}
		for _, s := range all {
			if s.Err != "" || s.Failed+s.Warnings != 0 || s.Passed == 0 {
				return fmt.Errorf("%s: %+v", s.Host, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// h2's agent turns forwarding back on at its next pass (any change in
	// its view starts one, whatever --resync-interval says), which may come
	// before doctor reads it: switch it off again until doctor sees it off.
	// Whenever doctor does, it must exit nonzero and blame h2 alone.
	ipForwardFailed := func(s doctor.Summary) bool {
		return slices.ContainsFunc(s.Findings, func(f doctor.Finding) bool {
			return f.Check == doctor.CheckIPForward && f.Severity == doctor.Fail
		})
	}
	err = poll.Until(ctx, "doctor --all to see ip_forward off on h2", 100*time.Millisecond, func() error {
		if out, err := h2.Run(ctx, "sysctl", "-w", "net.ipv4.ip_forward=0"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		all, code := run()
		for _, s := range all {
			if ipForwardFailed(s) && s.Host != h2.Name {
				t.Fatalf("%s: ip-forward failed, want only on %s: %+v", s.Host, h2.Name, s)
			}
		}
		i := slices.IndexFunc(all, func(s doctor.Summary) bool { return s.Host == h2.Name })
		if i < 0 || !ipForwardFailed(all[i]) {
			return fmt.Errorf("h2's agent put ip_forward back before doctor read it: %+v", all)
		}
		if code == 0 {
			t.Fatalf("doctor --all exited 0 though it found ip_forward off on h2: %+v", all)
		}
		return nil
	})
	if _, err := h2.Run(ctx, "sysctl", "-w", "net.ipv4.ip_forward=1"); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestDoctorConntrackNearFull fills h1's connection tracking table over
// netlink, in h1's namespace only (nf_conntrack_count is per namespace;
// nf_conntrack_max is the machine's and read-only here): at 90 % of its
// size doctor warns on conntrack and exits 0, at 95 % it fails and exits
// nonzero. The entries go with the lab's namespace.
func TestDoctorConntrackNearFull(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 3*time.Minute)
	h1 := l.Host(1)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h1)
	added := 0
	for _, step := range []struct {
		share    float64
		severity doctor.Severity
		failing  bool
	}{
		{0.90, doctor.Warn, false},
		{0.95, doctor.Fail, true},
	} {
		count, limit, err := h1.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		// A little over the share: the agent's own connections come
		// and go meanwhile.
		more := int(step.share*float64(limit)) + limit/500 - count
		start := time.Now()
		if err := h1.FillConntrack(ctx, added, more); err != nil {
			t.Fatal(err)
		}
		added += more
		took := time.Since(start)
		if count, _, err = h1.Conntrack(); err != nil {
			t.Fatal(err)
		}
		t.Logf("h1's conntrack table: %d of %d entries (%.1f%%), %d added over netlink in %v", count, limit, 100*float64(count)/float64(limit), more, took.Round(time.Millisecond))
		out, code, err := h1.Doctor(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var fs []doctor.Finding
		if err := json.Unmarshal(out, &fs); err != nil {
			t.Fatalf("doctor's output is not JSON findings: %v\n%s", err, out)
		}
		found := slices.ContainsFunc(fs, func(f doctor.Finding) bool {
			return f.Check == doctor.CheckConntrack && f.Severity == step.severity
		})
		if !found || (code != 0) != step.failing {
			t.Errorf("conntrack table at %.0f%%: doctor exited %d with no %s %s finding, or the wrong status (want nonzero: %v):\n%s",
				step.share*100, code, step.severity, doctor.CheckConntrack, step.failing, out)
		}
	}
}

// TestDoctorHostFirewall: firewalld and ufw as doctor finds them, one at a
// time on h1: their mark in h1's namespace (ufw's chain ufw-user-input in
// iptables-nft's filter table, firewalld's table inet firewalld) and their
// configuration files, which doctor sees in a private mount namespace
// over the machine's (lab.DoctorWithHostFiles; the machine's own files are
// never touched). A configuration that does not open Grapevine's ports
// fails host-firewall naming the firewall, and doctor exits nonzero; one
// that opens them passes.
func TestDoctorHostFirewall(t *testing.T) {
	t.Parallel()
	testneeds.Commands(t, "apt-get install iptables: the test adds ufw's chain with it", "iptables-nft")
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 2*time.Minute)
	h1 := l.Host(1)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	waitDoctorPasses(t, h1)

	ufwOn := func() error {
		if out, err := iptablesIn(h1, "-N", "ufw-user-input"); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	ufwOff := func() error {
		if out, err := iptablesIn(h1, "-X", "ufw-user-input"); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	firewalldOn := func() error {
		return h1.SetFilterTable("firewalld", &lab.FilterChain{Name: "filter_INPUT", Hook: nftables.ChainHookInput, Policy: nftables.ChainPolicyAccept})
	}
	firewalldOff := func() error { return h1.SetFilterTable("firewalld", nil) }
	ufwFiles := func(rules ...string) map[string]string {
		user := "*filter\n"
		for _, r := range rules {
			user += "### tuple ### " + r + "\n"
		}
		return map[string]string{
			"/etc/ufw/ufw.conf":   "ENABLED=yes\nLOGLEVEL=low\n",
			"/etc/default/ufw":    "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n",
			"/etc/ufw/user.rules": user + "COMMIT\n",
		}
	}
	firewalldFiles := func(zone string) map[string]string {
		return map[string]string{
			"/etc/firewalld/firewalld.conf":       "DefaultZone=public\nFirewallBackend=nftables\n",
			"/usr/lib/firewalld/zones/public.xml": `<?xml version="1.0" encoding="utf-8"?><zone><short>Public</short><service name="ssh"/></zone>`,
			"/usr/lib/firewalld/services/ssh.xml": `<?xml version="1.0" encoding="utf-8"?><service><port protocol="tcp" port="22"/></service>`,
			"/etc/firewalld/zones/public.xml":     zone,
		}
	}
	openZone := `<?xml version="1.0" encoding="utf-8"?><zone><service name="ssh"/>` +
		`<port protocol="tcp" port="7962-7963"/><port protocol="udp" port="7962"/><port protocol="udp" port="4789"/></zone>`
	sshOnlyZone := `<?xml version="1.0" encoding="utf-8"?><zone><service name="ssh"/></zone>`
	cases := []struct {
		name, subject string
		files         map[string]string
		on, off       func() error
		severity      doctor.Severity
	}{
		{"ufw allowing ssh only", "ufw", ufwFiles("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in"), ufwOn, ufwOff, doctor.Fail},
		{"ufw allowing Grapevine's ports on em1", "ufw", ufwFiles(
			"allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in",
			"allow any 7962 0.0.0.0/0 any 0.0.0.0/0 in_em1",
			"allow tcp 7963 0.0.0.0/0 any 0.0.0.0/0 in_em1",
			"allow udp 4789 0.0.0.0/0 any 0.0.0.0/0 in_em1"), ufwOn, ufwOff, doctor.OK},
		{"firewalld's public zone opening ssh only", "firewalld", firewalldFiles(sshOnlyZone), firewalldOn, firewalldOff, doctor.Fail},
		{"firewalld's public zone opening Grapevine's ports", "firewalld", firewalldFiles(openZone), firewalldOn, firewalldOff, doctor.OK},
	}
	for _, c := range cases {
		if err := c.on(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		out, code, err := h1.DoctorWithHostFiles(ctx, c.files)
		if offErr := c.off(); offErr != nil {
			t.Fatalf("%s: %v", c.name, offErr)
		}
		if err != nil {
			t.Fatal(err)
		}
		var fs []doctor.Finding
		if err := json.Unmarshal(out, &fs); err != nil {
			t.Fatalf("%s: doctor's output is not JSON findings: %v\n%s", c.name, err, out)
		}
		found := slices.ContainsFunc(fs, func(f doctor.Finding) bool {
			return f.Check == doctor.CheckHostFirewall && f.Subject == c.subject && f.Severity == c.severity
		})
		if !found || (code != 0) != (c.severity == doctor.Fail) {
			t.Errorf("%s: doctor exited %d; want a %s %s finding for %s and a nonzero exit only for a failure:\n%s", c.name, code, c.severity, doctor.CheckHostFirewall, c.subject, out)
		}
	}
	waitDoctorPasses(t, h1)
}
