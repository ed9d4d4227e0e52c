//go:build kubernetes_e2e

package kubelab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/runtimes"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// probeTimeout bounds one connection attempt from a pod; a denied attempt
// takes this long, as the policy drops the SYN.
const probeTimeout = 3

// policyPods are the pods of TestNetworkPolicy: web servers on port 80 (and
// 53 for "dns") and clients, in namespaces the policies tell apart, spread
// over the three nodes so that both same-node and cross-node paths count.
var policyPods = []struct{ ns, name, node, command string }{
	{"np-deny", "web", "node-a", webServer(80)},
	{"np-allow", "web", "node-b", webServer(80)},
	{"np-friend", "client", "node-c", idle},
	{"np-dnsonly", "client", "node-a", idle},
	{"np-open", "client", "node-b", idle},
	{"np-open", "dns", "node-c", webServer(80, 53)},
}

const idle = `trap 'exit 0' TERM; while :; do sleep 1; done`

// webServer serves "hello from <hostname>" over HTTP on each port.
func webServer(ports ...int) string {
	cmd := "mkdir -p /www && echo hello from $(hostname) > /www/index.html"
	for _, p := range ports {
		cmd += fmt.Sprintf(" && httpd -p %d -h /www", p)
	}
	return cmd + " && " + idle
}

// policies: a default-deny in np-deny, a default-deny with an
// allow-from-namespace in np-allow, and egress to DNS only in np-dnsonly.
var policies = defaultDeny("np-deny") + "---\n" + defaultDeny("np-allow") + "---\n" +
	allowFromNamespace("np-allow", "web", "np-friend") + "---\n" + `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: np-dnsonly}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
`

// connectivity is one probe: from a pod to a pod's port, and whether the
// policies allow it.
type connectivity struct {
	fromNS, from, toNS, to string
	port                   int
	allowed                bool
	why                    string
}

var policyChecks = []connectivity{
	{"np-open", "client", "np-deny", "web", 80, false, "default-deny in np-deny"},
	{"np-friend", "client", "np-deny", "web", 80, false, "default-deny in np-deny, whatever the source"},
	{"np-friend", "client", "np-allow", "web", 80, true, "np-allow admits np-friend"},
	{"np-open", "client", "np-allow", "web", 80, false, "np-allow admits np-friend only"},
	{"np-dnsonly", "client", "np-open", "dns", 53, true, "np-dnsonly may reach port 53"},
	{"np-dnsonly", "client", "np-open", "dns", 80, false, "np-dnsonly may reach nothing but port 53"},
	{"np-dnsonly", "client", "np-allow", "web", 80, false, "np-dnsonly egress, and np-allow ingress"},
	{"np-open", "client", "np-open", "dns", 80, true, "no policy selects either pod"},
}

// TestNetworkPolicy runs the manifest with NetworkPolicy enforcement on and
// checks pods' connectivity under a default-deny, an allow-from-namespace
// and an egress-to-DNS-only policy: every pair connects before the
// policies; afterwards the allowed ones still connect and the denied ones
// time out (the policy drops, it does not refuse). Then it puts 100 pods
// and 50 more policies in force and reports each agent's memory.
func TestNetworkPolicy(t *testing.T) {
	ctx, k, l, image := startCluster(t, 20*time.Minute)
	installGrapevine(ctx, k, l, image)
	agents := k.agentPods(ctx, image)

	var yaml strings.Builder
	namespaces := map[string]bool{}
	for _, p := range policyPods {
		if !namespaces[p.ns] {
			namespaces[p.ns] = true
			fmt.Fprintf(&yaml, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n", p.ns)
		}
		fmt.Fprintf(&yaml, "%s---\n", podIn(p.ns, p.name, p.node, p.command))
	}
	k.apply(ctx, yaml.String())
	ips := map[string]string{}
	for _, p := range policyPods {
		ips[p.ns+"/"+p.name] = k.waitPodsIn(ctx, p.ns, "name="+p.name, 1)[0].ip().String()
	}

	// Before the policies every probe connects: a denial afterwards is the
	// policies' doing.
	for _, c := range policyChecks {
		if err := k.connect(ctx, c, ips); err != nil {
			t.Fatalf("before any policy, %s/%s -> %s/%s:%d: %v", c.fromNS, c.from, c.toNS, c.to, c.port, err)
		}
	}
	k.apply(ctx, policies)
	applied := time.Now()
	// Policies take effect asynchronously (each agent watches them): wait
	// until every denied probe times out, then check all again.
	for _, c := range policyChecks {
		if !c.allowed {
			waitDenied(t, ctx, k, c, ips)
		}
	}
	t.Logf("the denied probes, one after the other (each up to %d s), all failed by %s after the policies were applied", probeTimeout, time.Since(applied).Round(100*time.Millisecond))
	for _, c := range policyChecks {
		err := k.connect(ctx, c, ips)
		switch {
		case c.allowed && err != nil:
			t.Errorf("%s/%s -> %s/%s:%d: %v; want connected (%s)", c.fromNS, c.from, c.toNS, c.to, c.port, err, c.why)
		case !c.allowed && err == nil:
			t.Errorf("%s/%s -> %s/%s:%d connected; want denied (%s)", c.fromNS, c.from, c.toNS, c.to, c.port, c.why)
		case !c.allowed && !strings.Contains(err.Error(), "timed out"):
			t.Errorf("%s/%s -> %s/%s:%d: %v; want a timeout (a denied SYN is dropped)", c.fromNS, c.from, c.toNS, c.to, c.port, err)
		default:
			t.Logf("%s/%s -> %s/%s:%d: allowed=%v as expected (%s)", c.fromNS, c.from, c.toNS, c.to, c.port, c.allowed, c.why)
		}
	}

	checkPolicyMemory(t, ctx, k, agents)
}

// waitDenied waits until c's probe fails: policies take effect
// asynchronously, each node's enforcer watching them.
func waitDenied(t *testing.T, ctx context.Context, k kube, c connectivity, ips map[string]string) {
	t.Helper()
	if err := poll.Until(ctx, fmt.Sprintf("%s/%s -> %s/%s:%d denied", c.fromNS, c.from, c.toNS, c.to, c.port), 500*time.Millisecond, func() error {
		if k.connect(ctx, c, ips) == nil {
			return fmt.Errorf("connected (%s)", c.why)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// defaultDeny is a NetworkPolicy isolating every pod of ns for ingress.
func defaultDeny(ns string) string {
	return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: %s}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`, ns)
}

// allowFromNamespace is a NetworkPolicy admitting to the pod named pod
// (label name=<pod>) of ns every pod of the namespace from.
func allowFromNamespace(ns, pod, from string) string {
	return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-%s, namespace: %s}
spec:
  podSelector: {matchLabels: {name: %s}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: %s}}
`, from, ns, pod, from)
}

// podIn is a busybox pod named name in namespace ns on node, running
// command, labelled name=<name>.
func podIn(ns, name, node, command string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {name: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 2
  containers:
  - name: busybox
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", %q]
`, name, ns, name, node, busybox, command)
}

// connect fetches the web page of c's destination from c's source pod; the
// error of a failed attempt carries wget's message, or "timed out" when the
// attempt was cut off after probeTimeout seconds (the policy dropped the
// SYN). busybox's own wget -T crashes, so timeout(1) bounds it.
func (k kube) connect(ctx context.Context, c connectivity, ips map[string]string) error {
	url := "http://" + net.JoinHostPort(ips[c.toNS+"/"+c.to], strconv.Itoa(c.port)) + "/"
	script := fmt.Sprintf(`timeout %d wget -q -O - %s; rc=$?; [ $rc = 143 ] && echo timed out >&2; exit $rc`, probeTimeout, url)
	out, err := k.c.Kubectl(ctx, "-n", c.fromNS, "exec", c.from, "--", "sh", "-c", script)
	if err != nil {
		return err
	}
	if want := "hello from " + c.to; strings.TrimSpace(string(out)) != want {
		return fmt.Errorf("GET %s: %q, want %q", url, out, want)
	}
	return nil
}

// Scale of the memory measurement: as issue 22's goal, 100 pods and 50
// policies, in scaleNamespaces namespaces.
const (
	scaleNamespaces = 10
	scalePods       = 100
	scalePolicies   = 50
)

// scaleWorkload is a namespace with a Deployment of pause pods (two tiers)
// and five policies of different shapes: a default-deny, tier to tier on a
// port, from another namespace, an ipBlock with except, and egress to DNS.
func scaleWorkload(i int) string {
	ns := fmt.Sprintf("np-scale-%d", i)
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s, labels: {scale: "%[2]d"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: pause, namespace: %[1]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: pause}}
  template:
    metadata: {labels: {app: pause, tier: t%[4]d}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: pause
        image: %[6]s
        imagePullPolicy: Never
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: %[1]s}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tier-to-tier, namespace: %[1]s}
spec:
  podSelector: {matchLabels: {tier: t%[4]d}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: pause}}}]
    ports: [{port: http}, {protocol: TCP, port: 9000, endPort: 9100}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-next, namespace: %[1]s}
spec:
  podSelector: {matchLabels: {app: pause}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {scale: "%[5]d"}}
      podSelector: {matchLabels: {app: pause}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-outside, namespace: %[1]s}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.%[2]d/32]}}]
    ports: [{protocol: UDP, port: 5000}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: %[1]s}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
---
`, ns, i, scalePods/scaleNamespaces, i%2, (i+1)%scaleNamespaces, runtimes.PauseImage.Ref)
}

// checkPolicyMemory puts 100 pause pods (spread over the nodes by the
// scheduler) and 50 policies in force beside the test's own, waits until
// every node's ruleset counts them, and reports the resident memory of
// each agent and each grapevine-policy, apart: VmRSS and VmHWM (the peak)
// of each container's process, read from /proc by the PID containerd
// reports for the container.
func checkPolicyMemory(t *testing.T, ctx context.Context, k kube, agents map[string]string) {
	t.Helper()
	var yaml strings.Builder
	for i := range scaleNamespaces {
		yaml.WriteString(scaleWorkload(i))
	}
	k.apply(ctx, yaml.String())
	wantPolicies := scalePolicies + strings.Count(policies, "kind: NetworkPolicy")
	if err := poll.Until(ctx, fmt.Sprintf("%d pause pods running", scalePods), time.Second, func() error {
		var list struct{ Items []podObject }
		out, err := k.c.Kubectl(ctx, "get", "pods", "-A", "-l", "app=pause", "-o", "json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal(out, &list); err != nil {
			return err
		}
		running := 0
		for _, p := range list.Items {
			if p.ready() && p.ip().IsValid() {
				running++
			}
		}
		if running < scalePods {
			return fmt.Errorf("%d of %d", running, scalePods)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	var list struct{ Items []podObject }
	k.getJSON(ctx, &list, "get", "pods", "-A", "-l", "app=pause")
	for _, p := range list.Items {
		perNode[p.Spec.NodeName]++
	}
	for _, n := range k.c.Nodes {
		if err := poll.Until(ctx, n.Name+"'s ruleset holds every policy", time.Second, func() error {
			got, err := rulesetGauge(ctx, k, n.Name, "policies")
			if err == nil && got < wantPolicies {
				err = fmt.Errorf("%d policies, want %d", got, wantPolicies)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The agent reports what grapevine-policy answers on the socket.
	for node, pod := range agents {
		st, err := k.agentStatus(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		if p := st.NetworkPolicy; !p.Enabled || p.Unreachable != "" || !p.Synced || p.Policies < wantPolicies || p.Error != "" {
			t.Errorf("`grapevine status` on %s reports network policy %+v, want enforced with %d policies", node, p, wantPolicies)
		}
	}
	for node, pod := range agents {
		memory := map[string][]byte{}
		for _, container := range []string{"agent", "policy"} {
			pid, err := containerPID(ctx, k, node, pod, container)
			if err != nil {
				t.Fatal(err)
			}
			if memory[container], err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err != nil {
				t.Fatal(err)
			}
		}
		rules, _ := rulesetGauge(ctx, k, node, "rules")
		ingress, _ := rulesetGauge(ctx, k, node, "ingress_pods")
		t.Logf("%s (%d pause pods, %d policies in force, %d rules, %d pods with ingress policy): agent %s, %s; grapevine-policy %s, %s (issue 22's goal, 40 MB or less, was for the agent when it enforced policy itself)",
			node, perNode[node], wantPolicies, rules, ingress,
			procField(memory["agent"], "VmRSS"), procField(memory["agent"], "VmHWM"),
			procField(memory["policy"], "VmRSS"), procField(memory["policy"], "VmHWM"))
	}
}

// policyMetricsAddr is where the manifest's policy container serves its
// metrics (its GRAPEVINE_METRICS_ADDR), in the node's namespace.
const policyMetricsAddr = "127.0.0.1:9963"

// rulesetGauge reads grapevine_netpol_ruleset{what=...} from
// grapevine-policy's metrics on node.
func rulesetGauge(ctx context.Context, k kube, node, what string) (int, error) {
	code, body, err := k.c.Node(node).Host.GetFrom(ctx, policyMetricsAddr, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("metrics of %s: HTTP %d", node, code)
	}
	prefix := fmt.Sprintf(`grapevine_netpol_ruleset{what=%q} `, what)
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("metrics of %s: no %s", node, strings.TrimSpace(prefix))
}

// containerPID is the machine's PID of the container named container in
// pod on node.
func containerPID(ctx context.Context, k kube, node, pod, container string) (int, error) {
	c := k.c.Node(node).Containerd
	ids, err := c.Crictl(ctx, "ps", "--pod", podID(k.t, ctx, k.c, node, pod), "--name", container, "-q")
	if err != nil {
		return 0, err
	}
	out, err := c.Crictl(ctx, "inspect", strings.TrimSpace(string(ids)))
	if err != nil {
		return 0, err
	}
	var inspect struct {
		Info struct {
			PID int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal(out, &inspect); err != nil || inspect.Info.PID == 0 {
		return 0, fmt.Errorf("crictl inspect of %s on %s: %v: %.200s", container, node, err, out)
	}
	return inspect.Info.PID, nil
}

// procField is one "Name:   value" line of /proc/PID/status, or "Name: ?".
func procField(status []byte, name string) string {
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return name + " " + strings.Join(strings.Fields(v), " ")
		}
	}
	return name + ": ?"
}
