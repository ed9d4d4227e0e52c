//go:build kubernetes_e2e

package kubelab_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/kubelab"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// TestKubernetesIPv6Only applies docs/kubernetes/grapevine.yaml with the
// edits docs/kubernetes.md asks of an IPv6-only cluster (GRAPEVINE_POOL an
// IPv6 pool, GRAPEVINE_BLOCK_SIZE 64) to an IPv6-only cluster: hosts
// without IPv4 addresses, the API server and the controller manager with
// IPv6 service and cluster ranges alone, kube-proxy with the IPv6 pod
// range, every kubelet with an IPv6 node address. The agents find each
// other through the Nodes' IPv6 InternalIPs (--join-kubernetes) and each
// holds a distinct IPv6 /64 of the pool, routed directly via its node's
// IPv6 address; every pod gets one IPv6 address, of its node's block;
// pods on different nodes ping each other; a Service's IPv6 cluster IP
// reaches a pod on another node; and NetworkPolicy holds for IPv6 pods.
func TestKubernetesIPv6Only(t *testing.T) {
	ctx, k, l, image := startClusterOf(t, 15*time.Minute, ipv6OnlyCluster)
	c := k.c
	pool := netip.MustParsePrefix(kubelab.PodCIDR6)
	applyAt := installGrapevineWith(ctx, k, l, image, map[string]string{
		"GRAPEVINE_POOL":       pool.String(),
		"GRAPEVINE_BLOCK_SIZE": "64",
	})
	k.apply(ctx, pingersDeployment)
	k.waitNodesReady(t, ctx)
	t.Logf("IPv6-only: manifest applied -> all 3 nodes Ready in %s", time.Since(applyAt).Round(100*time.Millisecond))
	agents := k.agentPods(ctx, image)
	// Each agent's seeds are the other nodes' IPv6 InternalIPs, as the
	// Node objects list them.
	for _, n := range c.Nodes {
		var seeds []string
		for _, peer := range c.Nodes {
			if peer != n {
				seeds = append(seeds, peer.Host.IP.String())
			}
		}
		slices.Sort(seeds)
		want := `addrs="[` + strings.Join(seeds, " ") + `]"`
		logs := string(k.run(ctx, "-n", "kube-system", "logs", agents[n.Name], "-c", "agent"))
		if !slices.ContainsFunc(strings.Split(logs, "\n"), func(line string) bool {
			return strings.Contains(line, `msg="seeds from the Kubernetes API"`) && strings.Contains(line, want)
		}) {
			t.Errorf("%s: no seeds %s from the Kubernetes API in its agent's log:\n%s", n.Name, want, logs)
		}
	}

	// Each node's block, from the node.json its agent wrote for the plugin.
	blocks := map[string]netip.Prefix{}
	if err := poll.Until(ctx, "every agent holds an IPv6 block", time.Second, func() error {
		for _, n := range c.Nodes {
			st, err := nodestate.Read(n.Path("/run/grapevine"))
			if err != nil {
				return err
			}
			blocks[n.Name] = st.Block
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkDistinctBlocks(t, blocks, pool, 64)
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("blocks: %v", blocks)
	// The nodes share the lab LAN's IPv6 network: each routes every other
	// node's block via that node's IPv6 address (its InternalIP), no VXLAN.
	waitDirectRoutes6(t, ctx, c, blocks, func(n *kubelab.Node) netip.Addr { return n.Host.IP })

	pingers := k.waitPods(ctx, "app=pingers", 3)
	for _, p := range pingers {
		name, node := p.Metadata.Name, p.Spec.NodeName
		if len(p.Status.PodIPs) != 1 || !p.ip().Is6() || !blocks[node].Contains(p.ip()) {
			t.Errorf("pod %s on %s: podIP %s, podIPs %v; want one IPv6 address of %s", name, node, p.Status.PodIP, p.Status.PodIPs, blocks[node])
			continue
		}
		t.Logf("pod %s on %s: podIP %s", name, node, p.ip())
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, from := range pingers {
		for _, to := range pingers {
			if from.Spec.NodeName == to.Spec.NodeName {
				continue
			}
			if out, err := c.Kubectl(ctx, "exec", from.Metadata.Name, "--", "ping", "-c", "2", "-W", "3", to.ip().String()); err != nil {
				t.Errorf("%s (%s) cannot ping %s (%s) at %s: %v\n%s", from.Metadata.Name, from.Spec.NodeName, to.Metadata.Name, to.Spec.NodeName, to.ip(), err, out)
			}
		}
	}

	checkServiceIPv6Only(t, ctx, k)
	checkPolicyIPv6Only(t, ctx, k)
}

// ipv6OnlyServicePods: a web server on node-b and a client on node-a.
var ipv6OnlyServicePods = []struct{ name, node, command string }{
	{"web", "node-b", webServer(80)},
	{"client", "node-a", idle},
}

// ipv6OnlyService is a Service in front of the web server; in an IPv6-only
// cluster its one cluster IP is IPv6.
const ipv6OnlyService = `apiVersion: v1
kind: Service
metadata: {name: web6, namespace: v6-web}
spec:
  selector: {name: web}
  ports: [{port: 8080, targetPort: 80}]
`

// checkServiceIPv6Only checks that the API server hands a Service one
// cluster IP, of the IPv6 service range, and that a pod on another node
// reaches the server through it (kube-proxy's IPv6 rules, then
// Grapevine's route).
func checkServiceIPv6Only(t *testing.T, ctx context.Context, k kube) {
	t.Helper()
	var yaml strings.Builder
	yaml.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: v6-web}\n---\n")
	for _, p := range ipv6OnlyServicePods {
		fmt.Fprintf(&yaml, "%s---\n", podIn("v6-web", p.name, p.node, p.command))
	}
	yaml.WriteString(ipv6OnlyService)
	k.apply(ctx, yaml.String())
	for _, p := range ipv6OnlyServicePods {
		k.waitPodsIn(ctx, "v6-web", "name="+p.name, 1)
	}
	var svc struct {
		Spec struct {
			ClusterIPs []string `json:"clusterIPs"`
		} `json:"spec"`
	}
	k.getJSON(ctx, &svc, "-n", "v6-web", "get", "service", "web6")
	services := netip.MustParsePrefix(kubelab.ServiceCIDR6)
	if len(svc.Spec.ClusterIPs) != 1 {
		t.Fatalf("Service web6: clusterIPs %v, want one of %s", svc.Spec.ClusterIPs, services)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIPs[0])
	if err != nil || !services.Contains(ip) {
		t.Fatalf("Service web6: clusterIPs %v, want one of %s", svc.Spec.ClusterIPs, services)
	}
	viaService := connectivity{"v6-web", "client", "v6-web", "web", 8080, true, "no policy"}
	// kube-proxy programs the Service once it sees it and its endpoints.
	if err := poll.Until(ctx, "v6-web/client -> Service web6 over IPv6", time.Second, func() error {
		return k.connect(ctx, viaService, map[string]string{"v6-web/web": ip.String()})
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("v6-web/client (node-a) -> Service v6-web/web6 at [%s]:8080 -> pod web (node-b): connected", ip)
}

// checkPolicyIPv6Only checks NetworkPolicy on IPv6 pods, after
// checkServiceIPv6Only started v6-web's pods: a default-deny drops what
// v6-web/client sends to v6-web/web on another node, and an
// allow-from-namespace then admits a pod of v6-friend (on a third node)
// while v6-web/client stays denied.
func checkPolicyIPv6Only(t *testing.T, ctx context.Context, k kube) {
	t.Helper()
	k.apply(ctx, "apiVersion: v1\nkind: Namespace\nmetadata: {name: v6-friend}\n---\n"+podIn("v6-friend", "client", "node-c", idle))
	ips := map[string]string{
		"v6-web/web":       k.waitPodsIn(ctx, "v6-web", "name=web", 1)[0].ip().String(),
		"v6-friend/client": k.waitPodsIn(ctx, "v6-friend", "name=client", 1)[0].ip().String(),
	}
	fromClient := connectivity{"v6-web", "client", "v6-web", "web", 80, false, "default-deny in v6-web"}
	fromFriend := connectivity{"v6-friend", "client", "v6-web", "web", 80, true, "v6-web admits v6-friend"}
	for _, c := range []connectivity{fromClient, fromFriend} {
		if err := k.connect(ctx, c, ips); err != nil {
			t.Fatalf("before any policy, %s/%s -> %s/%s:%d: %v", c.fromNS, c.from, c.toNS, c.to, c.port, err)
		}
	}
	k.apply(ctx, defaultDeny("v6-web"))
	waitDenied(t, ctx, k, fromClient, ips)
	k.apply(ctx, allowFromNamespace("v6-web", "web", "v6-friend"))
	if err := poll.Until(ctx, "v6-friend/client -> v6-web/web admitted", 500*time.Millisecond, func() error {
		return k.connect(ctx, fromFriend, ips)
	}); err != nil {
		t.Fatal(err)
	}
	if err := k.connect(ctx, fromClient, ips); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("v6-web/client -> v6-web/web with both policies: %v; want a timeout (%s)", err, fromClient.why)
	}
	t.Logf("IPv6 pods: default-deny drops v6-web/client -> [%s]:80; allow-from-namespace admits v6-friend/client", ips["v6-web/web"])
}
