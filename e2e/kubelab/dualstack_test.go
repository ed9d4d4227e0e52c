//go:build kubernetes_e2e

package kubelab_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/kubelab"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// waitNodesReady waits until the API server lists every node Ready.
func (k *kube) waitNodesReady(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := poll.Until(ctx, "every node Ready", 200*time.Millisecond, func() error {
		for _, n := range k.nodes(ctx) {
			if ready, msg := n.ready(); !ready {
				return fmt.Errorf("%s: %s", n.Metadata.Name, msg)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkDistinctBlocks checks that every node's block (by node name) is a
// /bits of pool and overlaps no other node's.
func checkDistinctBlocks(t *testing.T, blocks map[string]netip.Prefix, pool netip.Prefix, bits int) {
	t.Helper()
	for name, b := range blocks {
		if !pool.Contains(b.Addr()) || b.Bits() != bits {
			t.Errorf("%s holds block %s, want a /%d of %s", name, b, bits, pool)
		}
		for other, o := range blocks {
			if other != name && o.Overlaps(b) {
				t.Errorf("%s and %s hold overlapping blocks %s and %s", name, other, b, o)
			}
		}
	}
}

// waitDirectRoutes6 waits until every node routes every other node's IPv6
// block (blocks, by node name) directly: `<block> via <addr(peer)> dev
// em1`, the nodes sharing the lab LAN's IPv6 network.
func waitDirectRoutes6(t *testing.T, ctx context.Context, c *kubelab.Cluster, blocks map[string]netip.Prefix, addr func(*kubelab.Node) netip.Addr) {
	t.Helper()
	for _, n := range c.Nodes {
		for _, peer := range c.Nodes {
			if peer == n {
				continue
			}
			want := blocks[peer.Name].String() + " via " + addr(peer).String() + " dev em1"
			if err := poll.Until(ctx, fmt.Sprintf("%s: %q", n.Name, want), 200*time.Millisecond, func() error {
				out, err := n.Host.Run(ctx, "ip", "-6", "route", "show", "proto", "74")
				if err == nil && !strings.Contains(string(out), want) {
					err = fmt.Errorf("IPv6 routes %q", out)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestKubernetesDualStack applies docs/kubernetes/grapevine.yaml with the
// one edit docs/kubernetes.md asks of a dual-stack cluster,
// GRAPEVINE_POOL6, to a dual-stack cluster: the API server and the
// controller manager with IPv4 and IPv6 service and cluster ranges,
// kube-proxy with both pod ranges, every kubelet with an IPv4 and an IPv6
// node address. Every agent holds an IPv6 block of the pool, distinct per
// node, and routes the others' directly over their IPv6 addresses; every
// pod gets an address of each family, which the kubelet reports in
// status.podIPs IPv4 first (the cluster's primary family, podIP) and the
// IPv6 address from its node's IPv6 block; pods on different nodes ping
// each other over IPv6 and IPv4; and a NetworkPolicy holds for IPv6: a
// default-deny with an allow-from-namespace lets the allowed namespace's
// pod connect over IPv6 and drops another's, over IPv6 and IPv4. A
// RequireDualStack Service gets a cluster IP of each family, and the
// allowed pod reaches the server through the IPv6 one.
func TestKubernetesDualStack(t *testing.T) {
	ctx, k, l, image := startClusterOf(t, 15*time.Minute, dualStackCluster)
	c := k.c
	pool6 := netip.MustParsePrefix(kubelab.PodCIDR6)
	applyAt := installGrapevineWith(ctx, k, l, image, map[string]string{"GRAPEVINE_POOL6": pool6.String()})
	k.apply(ctx, pingersDeployment)
	k.waitNodesReady(t, ctx)
	t.Logf("dual-stack: manifest applied -> all 3 nodes Ready in %s", time.Since(applyAt).Round(100*time.Millisecond))
	k.agentPods(ctx, image)

	// Each node's blocks, from the node.json its agent wrote for the
	// plugin.
	blocks, blocks6 := map[string]netip.Prefix{}, map[string]netip.Prefix{}
	if err := poll.Until(ctx, "every agent holds an IPv4 and an IPv6 block", time.Second, func() error {
		for _, n := range c.Nodes {
			st, err := nodestate.Read(n.Path("/run/grapevine"))
			if err != nil {
				return err
			}
			if !st.Block6.IsValid() {
				return fmt.Errorf("%s: node.json has no IPv6 block", n.Name)
			}
			blocks[n.Name], blocks6[n.Name] = st.Block, st.Block6
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkDistinctBlocks(t, blocks6, pool6, 64)
	t.Logf("blocks: %v; IPv6 blocks: %v", blocks, blocks6)
	// The nodes share the lab LAN's IPv6 network: each routes every other
	// node's IPv6 block via that node's IPv6 address, no VXLAN.
	waitDirectRoutes6(t, ctx, c, blocks6, func(n *kubelab.Node) netip.Addr { return n.IP6 })

	pingers := k.waitPods(ctx, "app=pingers", 3)
	ip6 := map[string]netip.Addr{}
	for _, p := range pingers {
		name, node := p.Metadata.Name, p.Spec.NodeName
		var got []netip.Addr
		for _, a := range p.Status.PodIPs {
			ip, _ := netip.ParseAddr(a.IP)
			got = append(got, ip)
		}
		if len(got) != 2 || got[0] != p.ip() || !blocks[node].Contains(got[0]) || !blocks6[node].Contains(got[1]) {
			t.Errorf("pod %s on %s: podIP %s, podIPs %v; want podIPs [IPv4 of %s (podIP), IPv6 of %s]", name, node, p.Status.PodIP, got, blocks[node], blocks6[node])
			continue
		}
		ip6[name] = got[1]
		t.Logf("pod %s on %s: podIPs %v", name, node, got)
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, from := range pingers {
		for _, to := range pingers {
			if from.Spec.NodeName == to.Spec.NodeName {
				continue
			}
			for _, ip := range []netip.Addr{ip6[to.Metadata.Name], to.ip()} {
				if out, err := c.Kubectl(ctx, "exec", from.Metadata.Name, "--", "ping", "-c", "2", "-W", "3", ip.String()); err != nil {
					t.Errorf("%s (%s) cannot ping %s (%s) at %s: %v\n%s", from.Metadata.Name, from.Spec.NodeName, to.Metadata.Name, to.Spec.NodeName, ip, err, out)
				}
			}
		}
	}

	checkPolicy6(t, ctx, k)
	checkService6(t, ctx, k)
}

// dualStackPolicyPods: a web server on node-b, in a namespace whose
// policies admit only the namespace ds-friend; a client there, on node-a,
// and one in ds-other, on node-c.
var dualStackPolicyPods = []struct{ ns, name, node, command string }{
	{"ds-web", "web", "node-b", webServer(80)},
	{"ds-friend", "client", "node-a", idle},
	{"ds-other", "client", "node-c", idle},
}

// checkPolicy6 checks that a NetworkPolicy selects pods by their IPv6
// addresses too: before the policies both clients reach the web server
// over IPv6; after, the allowed one still does and the other's SYN is
// dropped, over IPv6 and over IPv4.
func checkPolicy6(t *testing.T, ctx context.Context, k kube) {
	t.Helper()
	var yaml strings.Builder
	for _, p := range dualStackPolicyPods {
		fmt.Fprintf(&yaml, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n%s---\n", p.ns, podIn(p.ns, p.name, p.node, p.command))
	}
	k.apply(ctx, yaml.String())
	ips, ips6 := map[string]string{}, map[string]string{}
	for _, p := range dualStackPolicyPods {
		pod := k.waitPodsIn(ctx, p.ns, "name="+p.name, 1)[0]
		if len(pod.Status.PodIPs) != 2 {
			t.Fatalf("%s/%s: podIPs %v, want two", p.ns, p.name, pod.Status.PodIPs)
		}
		ips[p.ns+"/"+p.name], ips6[p.ns+"/"+p.name] = pod.Status.PodIPs[0].IP, pod.Status.PodIPs[1].IP
	}
	allowed6 := connectivity{"ds-friend", "client", "ds-web", "web", 80, true, "ds-web admits ds-friend"}
	denied := connectivity{"ds-other", "client", "ds-web", "web", 80, false, "ds-web admits ds-friend only"}
	for _, c := range []connectivity{allowed6, denied} {
		if err := k.connect(ctx, c, ips6); err != nil {
			t.Fatalf("before any policy, %s/%s -> %s/%s over IPv6: %v", c.fromNS, c.from, c.toNS, c.to, err)
		}
	}
	k.apply(ctx, defaultDeny("ds-web")+"---\n"+allowFromNamespace("ds-web", "web", "ds-friend"))
	applied := time.Now()
	// Each agent applies policies as it sees them: wait until the denied
	// probe times out, then check every probe once.
	if err := poll.Until(ctx, "ds-other/client -> ds-web/web over IPv6 denied", 500*time.Millisecond, func() error {
		if k.connect(ctx, denied, ips6) == nil {
			return fmt.Errorf("connected (%s)", denied.why)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the IPv6 probe denied %s after the policies were applied", time.Since(applied).Round(100*time.Millisecond))
	for _, probe := range []struct {
		family string
		addrs  map[string]string
		checks []connectivity
	}{
		{"IPv6", ips6, []connectivity{allowed6, denied}},
		{"IPv4", ips, []connectivity{denied}},
	} {
		family, addrs := probe.family, probe.addrs
		for _, c := range probe.checks {
			err := k.connect(ctx, c, addrs)
			switch {
			case c.allowed && err != nil:
				t.Errorf("%s/%s -> %s/%s over %s: %v; want connected (%s)", c.fromNS, c.from, c.toNS, c.to, family, err, c.why)
			case !c.allowed && err == nil:
				t.Errorf("%s/%s -> %s/%s over %s connected; want denied (%s)", c.fromNS, c.from, c.toNS, c.to, family, c.why)
			case !c.allowed && !strings.Contains(err.Error(), "timed out"):
				t.Errorf("%s/%s -> %s/%s over %s: %v; want a timeout (a denied SYN is dropped)", c.fromNS, c.from, c.toNS, c.to, family, err)
			default:
				t.Logf("%s/%s -> %s/%s (%s) over %s: allowed=%v as expected (%s)", c.fromNS, c.from, c.toNS, c.to, addrs[c.toNS+"/"+c.to], family, c.allowed, c.why)
			}
		}
	}
}

// webService is a dual-stack Service in front of ds-web's web server.
const webService = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: ds-web}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {name: web}
  ports: [{port: 8080, targetPort: 80}]
`

// checkService6 checks that the API server hands a dual-stack Service a
// cluster IP of each family, from the service ranges, and that the pod the
// policies admit reaches the web server on another node through the IPv6
// one (kube-proxy's IPv6 rules, then Grapevine's IPv6 route).
func checkService6(t *testing.T, ctx context.Context, k kube) {
	t.Helper()
	k.apply(ctx, webService)
	var svc struct {
		Spec struct {
			ClusterIPs []string `json:"clusterIPs"`
		} `json:"spec"`
	}
	k.getJSON(ctx, &svc, "-n", "ds-web", "get", "service", "web")
	ranges := []netip.Prefix{netip.MustParsePrefix(kubelab.ServiceCIDR), netip.MustParsePrefix(kubelab.ServiceCIDR6)}
	var ips []netip.Addr
	for _, s := range svc.Spec.ClusterIPs {
		ip, _ := netip.ParseAddr(s)
		ips = append(ips, ip)
	}
	if len(ips) != 2 || !ranges[0].Contains(ips[0]) || !ranges[1].Contains(ips[1]) {
		t.Fatalf("dual-stack Service web: clusterIPs %v, want one of %s and one of %s", svc.Spec.ClusterIPs, ranges[0], ranges[1])
	}
	viaService := connectivity{"ds-friend", "client", "ds-web", "web", 8080, true, "ds-web admits ds-friend"}
	// kube-proxy programs the Service once it sees it and its endpoints.
	if err := poll.Until(ctx, "ds-friend/client -> Service web over IPv6", time.Second, func() error {
		return k.connect(ctx, viaService, map[string]string{"ds-web/web": ips[1].String()})
	}); err != nil {
		t.Error(err)
		return
	}
	t.Logf("ds-friend/client -> Service ds-web/web at [%s]:8080 -> pod web over IPv6: connected", ips[1])
}
