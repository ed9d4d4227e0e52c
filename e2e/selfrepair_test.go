package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/internal/testneeds"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// selfRepairResync is the agents' full resync in TestSelfRepair: nothing
// announces a changed FORWARD policy or sysctl, so the pass that repairs
// them is the periodic one.
const selfRepairResync = 2 * time.Second

// TestSelfRepair breaks, one at a time, what is the agent's own to repair
// and checks that the agent puts it back by itself on its next pass:
// Docker's FORWARD policy of DROP in iptables-nft's filter table (pods on
// two hosts ping each other again, the agent's accept rules are in the
// chain as iptables-nft lists them, doctor passes, and the rules go once
// the policy is ACCEPT again), a pod veth's proxy_arp turned off, and a
// pod's PERMANENT neighbour entry given another MAC. The agents run with
// no iptables binary on their PATH, as in the agent's image. Every change
// is inside the lab's namespaces.
func TestSelfRepair(t *testing.T) {
	t.Parallel()
	testneeds.Commands(t, "apt-get install iptables: the test sets Docker's FORWARD policy with it", "iptables-nft")
	noBinaries := t.TempDir() // the agents' PATH: no iptables there
	l := env.Lab(t, labtest.Options{Hosts: 2, AgentArgs: []string{"--resync-interval=" + selfRepairResync.String()}, AgentEnv: []string{"PATH=" + noBinaries}})
	ctx := timeout(t, 3*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	pingBothWays := func() error {
		if _, err := a.Ping(ctx, b.IP); err != nil {
			return fmt.Errorf("pod on h1 -> pod on h2: %w", err)
		}
		if _, err := b.Ping(ctx, a.IP); err != nil {
			return fmt.Errorf("pod on h2 -> pod on h1: %w", err)
		}
		return nil
	}
	if err := poll.Until(ctx, "pods on h1 and h2 to reach each other", 100*time.Millisecond, pingBothWays); err != nil {
		t.Fatal(err)
	}

	t.Run("FORWARD policy DROP", func(t *testing.T) {
		// As Docker does it, on both hosts: pod traffic is forwarded on
		// the way out of h1 and on the way into h2. The agents are
		// frozen meanwhile, so the test sees the policy cut the pods
		// off before it sees the agents repair it.
		for _, h := range []*lab.Host{h1, h2} {
			if err := h.FreezeAgent(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { h.ThawAgent() })
			if out, err := iptablesIn(h, "-P", "FORWARD", "DROP"); err != nil {
				t.Fatalf("%s: %v: %s", h.Name, err, out)
			}
		}
		cut, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := a.Ping(cut, b.IP)
		cancel()
		if err == nil {
			t.Fatal("pod on h1 -> pod on h2 answered through FORWARD policies of DROP with no accept rule: the case breaks nothing")
		}
		for _, h := range []*lab.Host{h1, h2} {
			if err := h.ThawAgent(); err != nil {
				t.Fatal(err)
			}
		}
		if err := poll.Until(ctx, "pods to reach each other through FORWARD policies of DROP", 100*time.Millisecond, pingBothWays); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			out, err := iptablesIn(h, "-S", "FORWARD")
			if err != nil {
				t.Fatalf("%s: %v: %s", h.Name, err, out)
			}
			// CombinedOutput: a warning (a rule iptables-nft cannot
			// read) would show.
			if strings.Contains(string(out), "arning") || strings.Contains(string(out), "incompatible") {
				t.Errorf("%s: iptables-nft -S FORWARD warns:\n%s", h.Name, out)
			}
			for _, want := range []string{"grapevine-accept-src-" + podPool.String(), "grapevine-accept-dst-" + podPool.String()} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s: FORWARD lacks the rule %s:\n%s", h.Name, want, out)
				}
			}
			st, err := h.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(st.ForwardAccept, func(f string) bool {
				return strings.HasPrefix(f, "iptables-nft filter FORWARD policy DROP") && strings.Contains(f, "nftables netlink")
			}) {
				t.Errorf("%s: status's forwardAccept %q names no iptables-nft chain handled over netlink", h.Name, st.ForwardAccept)
			}
			waitDoctorPasses(t, h)
			fs := doctorFindings(t, h)
			if !slices.ContainsFunc(fs, func(f doctor.Finding) bool {
				return f.Check == doctor.CheckForwardPolicy && f.Severity == doctor.OK && f.Subject == "nftables ip filter chain FORWARD"
			}) {
				t.Errorf("%s: doctor names no repaired FORWARD chain", h.Name)
			}
		}
		for _, h := range []*lab.Host{h1, h2} {
			if out, err := iptablesIn(h, "-P", "FORWARD", "ACCEPT"); err != nil {
				t.Fatalf("%s: %v: %s", h.Name, err, out)
			}
			err := poll.Until(ctx, h.Name+"'s accept rules to go with the policy of DROP", 100*time.Millisecond, func() error {
				out, err := iptablesIn(h, "-S", "FORWARD")
				if err != nil {
					return fmt.Errorf("%w: %s", err, out)
				}
				if strings.Contains(string(out), "grapevine-accept-") {
					return fmt.Errorf("still there:\n%s", out)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})

	eth0, err := a.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := h1.LinkByIndex(eth0.Attrs().ParentIndex)
	if err != nil {
		t.Fatal(err)
	}
	name := veth.Attrs().Name

	t.Run("proxy_arp off on a pod veth", func(t *testing.T) {
		key := "net.ipv4.conf." + name + ".proxy_arp"
		if out, err := h1.Run(ctx, "sysctl", "-w", key+"=0"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		err := poll.Until(ctx, key+" back to 1", 100*time.Millisecond, func() error {
			out, err := h1.Run(ctx, "sysctl", "-n", key)
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			if v := strings.TrimSpace(string(out)); v != "1" {
				return fmt.Errorf("%s = %s", key, v)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pod neighbour entry with another MAC", func(t *testing.T) {
		wrong := "02:00:00:00:be:ef"
		if out, err := h1.Run(ctx, "ip", "neigh", "replace", a.IP.String(), "lladdr", wrong, "dev", name, "nud", "permanent"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		podMAC := eth0.Attrs().HardwareAddr
		err := poll.Until(ctx, "the pod's neighbour entry back with its MAC", 100*time.Millisecond, func() error {
			neighs, err := h1.Neighbours()
			if err != nil {
				return err
			}
			for _, n := range neighs {
				if n.LinkIndex == veth.Attrs().Index && n.IP.Equal(net.IP(a.IP.AsSlice())) {
					if n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != podMAC.String() {
						return fmt.Errorf("entry %s lladdr %s state %#x, want %s PERMANENT", n.IP, n.HardwareAddr, n.State, podMAC)
					}
					return nil
				}
			}
			return fmt.Errorf("no entry for %s on %s", a.IP, name)
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := poll.Until(ctx, "pods to reach each other", 100*time.Millisecond, pingBothWays); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRouteOfPeerLeftWhileDown is flannel #2554's case: h2 leaves the
// mesh for good (its agent stops, its host drops off the network) while
// h3's agent is down. Once h3's agent is back, its first pass removes the
// route to h2's block the previous run left in the kernel: h3 is ready
// with no such route.
func TestRouteOfPeerLeftWhileDown(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	h2Block := statuses[h2.Name].Block
	if err := h3.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	routes, err := readRoutes(h3)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := routes.peers[h2Block]; !ok {
		t.Fatalf("h3 has no route to h2's block %s after its agent stopped; the case needs one", h2Block)
	}
	if err := h2.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h2.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.WaitStatus(ctx, "h2 gone", func(s lab.Status) bool {
		m, ok := s.Member(h2.Name)
		return !ok || m.State == "left" || m.State == "dead"
	}); err != nil {
		t.Fatal(err)
	}
	if err := h3.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// Ready is published by the pass that first reconciled: the route
	// must be gone by then.
	if _, err := h3.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	routes, err = readRoutes(h3)
	if err != nil {
		t.Fatal(err)
	}
	if via, ok := routes.peers[h2Block]; ok {
		t.Errorf("h3 still routes h2's old block %s via %s after its first pass", h2Block, via)
	}
}

// iptablesIn runs iptables-nft (as Docker does on an nftables host) in
// h's namespace, with the lab host's xtables lock.
func iptablesIn(h *lab.Host, args ...string) ([]byte, error) {
	cmd := h.Command(context.Background(), "iptables-nft", args...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(h.Dir, "xtables.lock"))
	return cmd.CombinedOutput()
}

// doctorFindings runs doctor on h and returns its findings.
func doctorFindings(t *testing.T, h *lab.Host) []doctor.Finding {
	t.Helper()
	out, _, err := h.Doctor(timeout(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal(out, &fs); err != nil {
		t.Fatalf("doctor's output is not JSON findings: %v\n%s", err, out)
	}
	return fs
}

// TestVXLANFollowsUplinkMTU: h1 reaches h3 over VXLAN; h1's uplink MTU is
// lowered under its agent, whose next pass rebuilds gv.vxlan with the new
// MTU less the VXLAN overhead and hands new pods the new MTU in node.json;
// raising it back does the reverse.
func TestVXLANFollowsUplinkMTU(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1, AgentArgs: []string{"--resync-interval=" + selfRepairResync.String()}})
	ctx := timeout(t, 2*time.Minute)
	h1 := l.Host(1)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	for _, uplink := range []int{1400, 1500} {
		if out, err := h1.Run(ctx, "ip", "link", "set", "dev", "em1", "mtu", fmt.Sprint(uplink)); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		want := uplink - 50
		err := poll.Until(ctx, fmt.Sprintf("gv.vxlan and node.json at MTU %d", want), 100*time.Millisecond, func() error {
			links, err := h1.Links()
			if err != nil {
				return err
			}
			i := slices.IndexFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == "gv.vxlan" })
			if i < 0 {
				return fmt.Errorf("no gv.vxlan")
			}
			if got := links[i].Attrs().MTU; got != want {
				return fmt.Errorf("gv.vxlan MTU %d", got)
			}
			st, err := nodestate.Read(h1.RunDir())
			if err != nil {
				return err
			}
			if st.MTU != want {
				return fmt.Errorf("node.json MTU %d", st.MTU)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitDoctorPasses(t, h1)
}
