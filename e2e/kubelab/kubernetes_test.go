//go:build kubernetes_e2e

// The Kubernetes end-to-end test: `make e2e-kubernetes` builds the
// Kubernetes binaries and the image archive, then runs it. It is not part
// of `make test` (it needs the binaries, and minutes).

package kubelab_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/kubelab"
	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

var env = labtest.NewEnv()

func TestMain(m *testing.M) { env.Main(m) }

const (
	manifestPath = "../../docs/kubernetes/grapevine.yaml"
	// manifestImage is the image the manifest names; the archive must
	// carry it (or GRAPEVINE_IMAGE, which then replaces it).
	manifestImage = "grapevine:dev"
	// manifestLease is the manifest's lease, which the test shortens to
	// testLease.
	manifestLease = `GRAPEVINE_LEASE: "24h"`
	testLease     = 45 * time.Second
	// rolloutImage is the same image under a new tag, for the rolling update.
	rolloutImage = "grapevine:rollout"
	busybox      = "localhost/grapevine-e2e/busybox:1"
)

var nodeNames = []string{"node-a", "node-b", "node-c"}

// TestKubernetes applies docs/kubernetes/grapevine.yaml to a three-node
// cluster of real Kubernetes binaries and checks what a user would: nodes
// become Ready only once their agent holds a block; the agents find each
// other through the API server with the manifest's RBAC and nothing more;
// pods on every node get addresses from their node's block and reach each
// other; a hostPort answers from outside; a rolling update of the DaemonSet
// keeps a TCP stream between pods alive; deleting a Node whose host is gone
// frees its block.
func TestKubernetes(t *testing.T) {
	ctx, k, l, image := startCluster(t, 15*time.Minute)
	c := k.c

	// No network before the manifest: the runtime has no conflist.
	for _, n := range k.nodes(ctx) {
		if ready, msg := n.ready(); ready {
			t.Fatalf("node %s is Ready before Grapevine is installed", n.Metadata.Name)
		} else {
			t.Logf("before the manifest, %s: NotReady (%s)", n.Metadata.Name, msg)
		}
	}

	applyAt := installGrapevine(ctx, k, l, image)
	// The workload comes with it, as it would in a cluster being built: its
	// pods wait for the network.
	k.apply(ctx, pingersDeployment)

	// Ready only once the agent holds a block: the kubelet reports the
	// runtime's network readiness, which follows the conflist, which the
	// agent writes after node.json.
	readyAt := map[string]time.Duration{}
	err := poll.Until(ctx, "every node Ready", 200*time.Millisecond, func() error {
		for _, n := range k.nodes(ctx) {
			name := n.Metadata.Name
			ready, _ := n.ready()
			_, noBlock := os.Stat(c.Node(name).Path("/run/grapevine/node.json"))
			if ready && noBlock != nil {
				t.Errorf("node %s is Ready while its agent holds no block (no node.json)", name)
			}
			if _, seen := readyAt[name]; ready && !seen {
				readyAt[name] = time.Since(applyAt)
			}
		}
		if len(readyAt) < len(nodeNames) {
			return fmt.Errorf("ready: %v", readyAt)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	allReady := slices.Max(mapValues(readyAt))
	t.Logf("manifest applied -> all 3 nodes Ready in %s (%v)", allReady.Round(100*time.Millisecond), readyAt)

	agents := k.agentPods(ctx, image)
	bringUp := k.bringUp(ctx, c, agents, applyAt, readyAt)
	t.Logf("bring-up: %s", bringUp)
	checkArchiveRuns(t, ctx, c, os.Getenv("GRAPEVINE_IMAGE_ARCHIVE"), agents)
	statuses := map[string]lab.Status{}
	err = poll.Until(ctx, "every agent sees its 2 peers alive", time.Second, func() error {
		for node, pod := range agents {
			s, err := k.agentStatus(ctx, pod)
			if err != nil {
				return err
			}
			alive := 0
			for _, m := range s.Members {
				if m.State == "alive" && m.Route == "programmed" {
					alive++
				}
			}
			if alive != 2 || !s.Ready {
				return fmt.Errorf("%s: ready=%v, %d peers alive and routed", node, s.Ready, alive)
			}
			statuses[node] = s
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]netip.Prefix{}
	for node, s := range statuses {
		blocks[node] = s.Block
		for other, b := range blocks {
			if other != node && b.Overlaps(s.Block) {
				t.Errorf("%s and %s hold overlapping blocks %s and %s", node, other, b, s.Block)
			}
		}
	}
	t.Logf("blocks: %v", blocks)
	checkJoinedThroughAPI(t, ctx, k, agents)

	// Pods of the Deployment, one per node, and a bare pod: addresses from
	// their node's block, every pair reaches the other.
	pingers := k.waitPods(ctx, "app=pingers", 3)
	firstPing := k.firstCrossNodePing(ctx, pingers, applyAt)
	t.Logf("manifest applied -> first cross-node pod ping in %s", firstPing.Round(100*time.Millisecond))
	k.apply(ctx, fmt.Sprintf(barePod, "peer", "node-c", `["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]`, ""))
	peer := k.waitPods(ctx, "name=peer", 1)[0]
	for _, p := range append(pingers, peer) {
		if b := blocks[p.Spec.NodeName]; !b.Contains(p.ip()) {
			t.Errorf("pod %s on %s has %s, outside its node's block %s", p.Metadata.Name, p.Spec.NodeName, p.ip(), b)
		}
	}
	for _, from := range pingers {
		for _, to := range append(pingers, peer) {
			if from.Spec.NodeName == to.Spec.NodeName {
				continue
			}
			if out, err := c.Kubectl(ctx, "exec", from.Metadata.Name, "--", "ping", "-c", "2", "-W", "3", to.ip().String()); err != nil {
				t.Errorf("%s (%s) cannot ping %s (%s): %v\n%s", from.Metadata.Name, from.Spec.NodeName, to.Metadata.Name, to.Spec.NodeName, err, out)
			}
		}
	}

	checkForwardDrop(t, ctx, k, pingers)
	checkHostPort(t, ctx, k, l)
	checkRollingUpdate(t, ctx, k, agents, blocks)
	checkNodeDeletion(t, ctx, k, blocks)
	t.Logf("figures: manifest -> 3 nodes Ready %s; manifest -> first cross-node ping %s; %s",
		allReady.Round(100*time.Millisecond), firstPing.Round(100*time.Millisecond), bringUp)
}

// bringUp says how long the nodes took from their agents' start to Ready,
// phase by phase, from each agent's log (its start, the ledger joined or
// founded, the block's first grant), the conflist's modification time and
// when the node was first seen Ready. The figure that counts is the first
// agent's start to the last node's Ready.
func (k kube) bringUp(ctx context.Context, c *kubelab.Cluster, agents map[string]string, applyAt time.Time, readyAt map[string]time.Duration) string {
	k.t.Helper()
	phases := []struct{ name, logged string }{
		{"ledger", `msg="member of ledger"`},
		{"block", `msg="the ledger assigns this node its block"`},
	}
	var first, last time.Time
	var out []string
	for _, node := range slices.Sorted(maps.Keys(agents)) {
		logs := string(k.run(ctx, "-n", "kube-system", "logs", agents[node]))
		start, ok := loggedAt(logs, `msg="starting grapevine agent"`)
		if !ok {
			out = append(out, node+": no start in its agent's log")
			continue
		}
		line := fmt.Sprintf("%s: agent started %.1fs after the manifest", node, start.Sub(applyAt).Seconds())
		for _, p := range phases {
			if at, ok := loggedAt(logs, p.logged); ok {
				line += fmt.Sprintf(", %s +%.2fs", p.name, at.Sub(start).Seconds())
			}
		}
		if fi, err := os.Stat(c.Node(node).Path("/etc/cni/net.d/" + lab.ConfListName)); err == nil {
			line += fmt.Sprintf(", conflist +%.2fs", fi.ModTime().Sub(start).Seconds())
		}
		ready := applyAt.Add(readyAt[node])
		line += fmt.Sprintf(", Ready +%.1fs (polled every 200 ms)", ready.Sub(start).Seconds())
		out = append(out, line)
		if first.IsZero() || start.Before(first) {
			first = start
		}
		if ready.After(last) {
			last = ready
		}
	}
	return fmt.Sprintf("first agent's start -> last node Ready %.1fs; %s", last.Sub(first).Seconds(), strings.Join(out, "; "))
}

// loggedAt is the time of the first log line containing what (the agent's
// text log: time=<RFC 3339> first).
func loggedAt(logs, what string) (time.Time, bool) {
	for line := range strings.Lines(logs) {
		if !strings.Contains(line, what) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		return at, err == nil
	}
	return time.Time{}, false
}

// pingersDeployment spreads three busybox pods over the three nodes.
const pingersDeployment = `apiVersion: apps/v1
kind: Deployment
metadata: {name: pingers, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: pingers}}
  template:
    metadata: {labels: {app: pingers}}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: pingers}}
      containers:
      - name: busybox
        image: ` + busybox + `
        imagePullPolicy: Never
`

// barePod is a Pod without a controller or Service: name, node, command,
// and extra container fields.
const barePod = `apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: default, labels: {name: %[1]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 2
  containers:
  - name: busybox
    image: ` + busybox + `
    imagePullPolicy: Never
    command: %[3]s
%[4]s`

// checkForwardDrop sets one node's FORWARD policy to DROP in iptables-nft,
// as Docker does when it starts, and checks that a pod on another node
// still reaches a pod there: the agent, whose image has no iptables binary,
// puts the pool's accept rules into that chain over nftables netlink.
func checkForwardDrop(t *testing.T, ctx context.Context, k kube, pingers []podObject) {
	t.Helper()
	from, to := pingers[0], pingers[1]
	n := k.c.Node(to.Spec.NodeName)
	if out, err := n.Run(ctx, "iptables-nft", "-P", "FORWARD", "DROP"); err != nil {
		t.Errorf("iptables-nft -P FORWARD DROP on %s: %v: %s", n.Name, err, out)
		return
	}
	defer n.Run(context.WithoutCancel(ctx), "iptables-nft", "-P", "FORWARD", "ACCEPT")
	err := poll.Until(ctx, fmt.Sprintf("%s -> %s through %s's FORWARD policy of DROP", from.Metadata.Name, to.Metadata.Name, n.Name), time.Second, func() error {
		rules, err := n.Run(ctx, "iptables-nft", "-S", "FORWARD")
		if err != nil {
			return err
		}
		if !strings.Contains(string(rules), "grapevine-accept-src-") || !strings.Contains(string(rules), "grapevine-accept-dst-") {
			return fmt.Errorf("no accept rules of the agent's: %s", rules)
		}
		if out, err := k.c.Kubectl(ctx, "exec", from.Metadata.Name, "--", "ping", "-c", "1", "-W", "1", to.ip().String()); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// checkHostPort runs a web server pod with a hostPort on node-b and fetches
// a page from the lab's outside host through the node's address.
func checkHostPort(t *testing.T, ctx context.Context, k kube, l *lab.Lab) {
	t.Helper()
	k.apply(ctx, fmt.Sprintf(barePod, "web", "node-b",
		`["/bin/sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]`,
		"    ports: [{containerPort: 80, hostPort: 8080}]\n"))
	web := k.waitPods(ctx, "name=web", 1)[0]
	url := fmt.Sprintf("http://%s:8080/", k.c.Node("node-b").Host.IP)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return l.Outside.Dial(ctx, addr) },
	}}
	var body string
	err := poll.Until(ctx, "hostPort answers from outside", time.Second, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Errorf("pod %s (%s) by hostPort: %v", web.Metadata.Name, web.ip(), err)
		return
	}
	if body != "hello from web" {
		t.Errorf("GET %s from the outside host: %q, want %q", url, body, "hello from web")
	}
	t.Logf("outside host -> %s -> pod web (%s): %q", url, web.ip(), body)
}

// checkRollingUpdate streams TCP from a pod on node-b to a pod on node-a
// while the DaemonSet rolls to a new image tag, one node at a time, and
// checks the connection survived and still carries data afterwards.
func checkRollingUpdate(t *testing.T, ctx context.Context, k kube, agents map[string]string, blocks map[string]netip.Prefix) {
	t.Helper()
	k.apply(ctx, fmt.Sprintf(barePod, "sink", "node-a",
		// busybox nc ends the connection at the end of its input: give it one that never ends.
		`["/bin/sh", "-c", "sleep 2147483647 | nc -l -p 5000 > /tmp/received; touch /tmp/closed; while :; do sleep 1; done"]`, ""))
	sink := k.waitPods(ctx, "name=sink", 1)[0]
	k.apply(ctx, fmt.Sprintf(barePod, "source", "node-b",
		fmt.Sprintf(`["/bin/sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done | nc %s 5000; touch /tmp/closed; while :; do sleep 1; done"]`, sink.ip()), ""))
	k.waitPods(ctx, "name=source", 1)
	received := func() (int, error) {
		out, err := k.c.Kubectl(ctx, "exec", "sink", "--", "sh", "-c", "test ! -e /tmp/closed && wc -l < /tmp/received")
		if err != nil {
			return 0, fmt.Errorf("the stream's sink: %w (connection closed?)", err)
		}
		return strconv.Atoi(strings.TrimSpace(string(out)))
	}
	if err := poll.Until(ctx, "the TCP stream flows", 500*time.Millisecond, func() error {
		n, err := received()
		if err == nil && n < 10 {
			err = fmt.Errorf("%d lines", n)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	for _, n := range k.c.Nodes {
		if _, err := n.Run(ctx, "ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "tag",
			"docker.io/library/"+manifestImage, "docker.io/library/"+rolloutImage); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	k.run(ctx, "-n", "kube-system", "set", "image", "ds/grapevine", "install-cni="+rolloutImage, "agent="+rolloutImage)
	done := make(chan error, 1)
	go func() {
		_, err := k.c.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "ds/grapevine", "--timeout=6m")
		done <- err
	}()
	var longestStall time.Duration
	last, lastChange, samples := -1, time.Now(), 0
	for rolling := true; rolling; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("rolling update: %v", err)
			}
			rolling = false
		case <-time.After(300 * time.Millisecond):
		}
		n, err := received()
		if err != nil {
			t.Fatalf("during the rolling update: %v", err)
		}
		samples++
		if n != last {
			last, lastChange = n, time.Now()
		}
		longestStall = max(longestStall, time.Since(lastChange))
	}
	t.Logf("rolling update of 3 agents took %s; the pod-to-pod TCP stream's longest stall between samples: %s (%d samples, one every ~0.5 s)",
		time.Since(start).Round(100*time.Millisecond), longestStall.Round(100*time.Millisecond), samples)
	after := k.agentPods(ctx, rolloutImage)
	for node, pod := range after {
		if pod == agents[node] {
			t.Errorf("agent pod %s on %s was not replaced", pod, node)
		}
	}
	before, err := received()
	if err != nil {
		t.Fatal(err)
	}
	if err := poll.Until(ctx, "the stream carries data after the update", 500*time.Millisecond, func() error {
		n, err := received()
		if err == nil && n < before+20 {
			err = fmt.Errorf("%d lines, %d before", n, before)
		}
		return err
	}); err != nil {
		t.Error(err)
	}
	if out, err := k.c.Kubectl(ctx, "exec", "source", "--", "sh", "-c", "test ! -e /tmp/closed"); err != nil {
		t.Errorf("the stream's source saw the connection end: %v %s", err, out)
	}
	// Each node kept its block across the restart of its agent.
	for node, pod := range after {
		s, err := k.agentStatus(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		if s.Block != blocks[node] {
			t.Errorf("%s held %s before the update, %s after", node, blocks[node], s.Block)
		}
	}
}

// checkNodeDeletion takes node-c's host off the LAN with its agent still
// running (alive but cut off: it may go on starting pods on its block until
// its lease ends) and deletes its Node object. The remaining agents withdraw
// its route, report the release as pending in their status, and free its
// block in the ledger only once node-c's lease has ended.
func checkNodeDeletion(t *testing.T, ctx context.Context, k kube, blocks map[string]netip.Prefix) {
	t.Helper()
	gone := k.c.Node("node-c")
	if err := gone.Host.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	k.run(ctx, "delete", "node", "node-c")
	agents := k.agentPods(ctx, rolloutImage)
	block := blocks["node-c"]
	// One loop watches both, as the release is pending only until node-c's
	// lease ends: the route withdrawn on node-a and node-b, and node-a's
	// status naming the pending release.
	var withdrawn time.Duration
	pending := ""
	// node-c's node.json says until when its plugin may hand out addresses
	// from the block; its agent, cut off, renews no more. The latest lease
	// seen counts.
	var leaseEnds time.Time
	watchLease := func() {
		if st, err := nodestate.Read(gone.Path("/run/grapevine")); err == nil && st.Lease.EndsAt.After(leaseEnds) {
			leaseEnds = st.Lease.EndsAt
		}
	}
	watchLease()
	err := poll.Until(ctx, "node-c's route withdrawn and its release pending", time.Second, func() error {
		watchLease()
		if pending == "" {
			s, err := k.agentStatus(ctx, agents["node-a"])
			if err != nil {
				return err
			}
			for _, p := range s.PendingReleases {
				if strings.HasPrefix(p, "node-c ") {
					pending = p
				}
			}
		}
		if withdrawn == 0 {
			routed := false
			for _, node := range []string{"node-a", "node-b"} {
				routes, err := k.c.Node(node).Host.Routes()
				if err != nil {
					return err
				}
				for _, r := range routes {
					routed = routed || (r.Dst != nil && r.Dst.String() == block.String() && r.Gw != nil)
				}
			}
			if !routed {
				withdrawn = time.Since(deleted)
			}
		}
		if pending == "" || withdrawn == 0 {
			return fmt.Errorf("route withdrawn after %s; pending release %q", withdrawn, pending)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("node-a's status while node-c's lease runs: pending release: %s", pending)
	// The ledger is asked through the operator's command: once the block is
	// free, there is nothing left to release.
	freeCtx, cancel := context.WithTimeout(ctx, 2*testLease+time.Minute)
	defer cancel()
	err = poll.Until(freeCtx, "node-c's block freed in the ledger", time.Second, func() error {
		watchLease()
		out, err := k.c.Kubectl(ctx, "-n", "kube-system", "exec", agents["node-a"], "-c", "agent", "--", "grapevine", "release", "node-c")
		if err == nil {
			return fmt.Errorf("grapevine release node-c succeeded (%s): the block was still node-c's", strings.TrimSpace(string(out)))
		}
		if !strings.Contains(err.Error(), "no block assigned to that node") {
			return err
		}
		return nil
	})
	if err != nil {
		t.Errorf("after deleting Node node-c: %v", err)
		return
	}
	freed := time.Now()
	if leaseEnds.IsZero() {
		t.Fatal("node-c's node.json held no lease after the cut")
	}
	if freed.Before(leaseEnds) {
		t.Errorf("node-c's block freed at %s, before its lease ended at %s", freed.Format(time.StampMilli), leaseEnds.Format(time.StampMilli))
	}
	// node-c, cut off, keeps its conflist and node.json with the ended
	// lease: its plugin refuses new pods, and its runtime still tears pods
	// down through CNI.
	if err := gone.Stop(); err != nil {
		t.Errorf("stopping node-c: %v", err)
	}
	t.Logf("node-c cut off and its Node deleted: route to %s withdrawn on node-a and node-b in %s; block free in the ledger in %s, %s after node-c's lease ended (lease %s)",
		block, withdrawn.Round(100*time.Millisecond), freed.Sub(deleted).Round(100*time.Millisecond), freed.Sub(leaseEnds).Round(100*time.Millisecond), testLease)
}

// checkArchiveRuns checks that every agent pod runs the image of the archive
// built in this run: the container's image is the archive's config digest.
func checkArchiveRuns(t *testing.T, ctx context.Context, c *kubelab.Cluster, archive string, agents map[string]string) {
	t.Helper()
	want, err := archiveConfigDigest(archive)
	if err != nil {
		t.Fatal(err)
	}
	for node, pod := range agents {
		out, err := c.Node(node).Containerd.Crictl(ctx, "ps", "--pod", podID(t, ctx, c, node, pod), "--name", "agent", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var ps struct {
			Containers []struct {
				ImageRef string `json:"imageRef"`
				Image    struct {
					Image string `json:"image"`
				} `json:"image"`
			} `json:"containers"`
		}
		if err := json.Unmarshal(out, &ps); err != nil || len(ps.Containers) != 1 {
			t.Fatalf("crictl ps on %s: %v: %s", node, err, out)
		}
		got := ps.Containers[0].Image.Image
		if got != want {
			t.Errorf("agent on %s runs image %s, the archive's is %s", node, got, want)
		}
	}
	t.Logf("every agent runs the archive's image %s", want[:19])
}

func podID(t *testing.T, ctx context.Context, c *kubelab.Cluster, node, pod string) string {
	out, err := c.Node(node).Containerd.Crictl(ctx, "pods", "--name", pod, "-q")
	if err != nil || len(strings.Fields(string(out))) != 1 {
		t.Fatalf("sandbox of %s on %s: %v %q", pod, node, err, out)
	}
	return strings.TrimSpace(string(out))
}

// archiveConfigDigest reads the image config's digest from a docker archive.
func archiveConfigDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("%s: no manifest.json: %w", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ Config string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil || len(m) != 1 {
			return "", fmt.Errorf("%s: manifest.json: %v", path, err)
		}
		// "blobs/sha256/<hex>" (OCI layout), "<hex>.json" (docker).
		hex := strings.TrimPrefix(strings.TrimSuffix(filepath.Base(m[0].Config), ".json"), "sha256:")
		return "sha256:" + hex, nil
	}
}

// checkJoinedThroughAPI checks the agents found each other through the API
// server, which is their only way (the manifest gives no peer list), with
// the manifest's RBAC and nothing more.
func checkJoinedThroughAPI(t *testing.T, ctx context.Context, k kube, agents map[string]string) {
	t.Helper()
	sa := "--as=system:serviceaccount:kube-system:grapevine"
	for _, q := range []struct {
		verb, resource string
		want           string
	}{
		{"list", "nodes", "yes"}, {"watch", "nodes", "yes"}, {"get", "nodes", "yes"},
		{"update", "nodes", "no"}, {"delete", "nodes", "no"},
		// NetworkPolicy's inputs, read only.
		{"list", "pods", "yes"}, {"watch", "namespaces", "yes"}, {"list", "networkpolicies.networking.k8s.io", "yes"},
		{"update", "pods", "no"}, {"delete", "pods", "no"}, {"create", "networkpolicies.networking.k8s.io", "no"},
		{"get", "secrets", "no"}, {"list", "configmaps", "no"},
		// The ledger's record: that one ConfigMap, read and created only.
		{"get", "configmaps/grapevine-ledger", "yes"}, {"create", "configmaps", "yes"},
		{"get", "configmaps/grapevine-config", "no"}, {"update", "configmaps/grapevine-ledger", "no"},
		{"delete", "configmaps/grapevine-ledger", "no"},
	} {
		out, _ := k.c.Kubectl(ctx, "-n", "kube-system", "auth", "can-i", q.verb, q.resource, sa)
		if got := strings.TrimSpace(string(out)); got != q.want {
			t.Errorf("can the grapevine service account %s %s: %q, want %q", q.verb, q.resource, got, q.want)
		}
	}
	founders := 0
	for node, pod := range agents {
		out, err := k.c.Kubectl(ctx, "-n", "kube-system", "logs", pod, "-c", "agent")
		if err != nil {
			t.Fatal(err)
		}
		log := string(out)
		if strings.Contains(log, "forbidden") || strings.Contains(log, "Forbidden") {
			t.Errorf("agent on %s was refused by the API server:\n%s", node, log)
		}
		if strings.Contains(log, "founding the cluster's ledger, recorded first") {
			founders++
		}
	}
	if founders != 1 {
		t.Errorf("%d agents founded the ledger after creating its record, want 1", founders)
	}
	if out, err := k.c.Kubectl(ctx, "-n", "kube-system", "get", "configmap", "grapevine-ledger", "-o", "jsonpath={.data.clusterID}"); err != nil || len(strings.TrimSpace(string(out))) != 16 {
		t.Errorf("the ledger's record: %q, %v; want a cluster ID", out, err)
	}
}

// kube drives the cluster through kubectl, as a user would.
type kube struct {
	t *testing.T
	c *kubelab.Cluster
}

func (k kube) run(ctx context.Context, args ...string) []byte {
	k.t.Helper()
	out, err := k.c.Kubectl(ctx, args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

func (k kube) apply(ctx context.Context, yaml string) {
	k.t.Helper()
	if _, err := k.c.KubectlIn(ctx, yaml, "apply", "-f", "-"); err != nil {
		k.t.Fatal(err)
	}
}

func (k kube) getJSON(ctx context.Context, v any, args ...string) {
	k.t.Helper()
	out := k.run(ctx, append(args, "-o", "json")...)
	if err := json.Unmarshal(out, v); err != nil {
		k.t.Fatalf("kubectl %v: %v", args, err)
	}
}

type nodeObject struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Status struct {
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"conditions"`
	} `json:"status"`
}

func (n nodeObject) ready() (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True", c.Message
		}
	}
	return false, "no Ready condition"
}

func (k kube) nodes(ctx context.Context) []nodeObject {
	var list struct{ Items []nodeObject }
	k.getJSON(ctx, &list, "get", "nodes")
	return list.Items
}

type podObject struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		NodeName   string `json:"nodeName"`
		Containers []struct {
			Image string `json:"image"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase  string `json:"phase"`
		PodIP  string `json:"podIP"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

func (p podObject) ip() netip.Addr {
	a, _ := netip.ParseAddr(p.Status.PodIP)
	return a
}

func (p podObject) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// waitPods waits until n pods match selector in the default namespace and
// all are ready, and returns them.
func (k kube) waitPods(ctx context.Context, selector string, n int) []podObject {
	k.t.Helper()
	return k.waitPodsIn(ctx, "default", selector, n)
}

// waitPodsIn is waitPods in namespace ns.
func (k kube) waitPodsIn(ctx context.Context, ns, selector string, n int) []podObject {
	k.t.Helper()
	var pods []podObject
	err := poll.Until(ctx, "pods "+selector+" ready", 500*time.Millisecond, func() error {
		var list struct{ Items []podObject }
		out, err := k.c.Kubectl(ctx, "-n", ns, "get", "pods", "-l", selector, "-o", "json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal(out, &list); err != nil {
			return err
		}
		pods = list.Items
		if len(pods) != n {
			return fmt.Errorf("%d pods", len(pods))
		}
		for _, p := range pods {
			if !p.ready() || !p.ip().IsValid() {
				return fmt.Errorf("%s is %s", p.Metadata.Name, p.Status.Phase)
			}
		}
		return nil
	})
	if err != nil {
		k.t.Fatal(err)
	}
	return pods
}

// agentPods waits until every node runs a ready agent pod of image and
// returns them by node.
func (k kube) agentPods(ctx context.Context, image string) map[string]string {
	k.t.Helper()
	byNode := map[string]string{}
	err := poll.Until(ctx, "agent pods of "+image+" ready", 500*time.Millisecond, func() error {
		var list struct{ Items []podObject }
		out, err := k.c.Kubectl(ctx, "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=grapevine", "-o", "json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal(out, &list); err != nil {
			return err
		}
		clear(byNode)
		for _, p := range list.Items {
			if p.ready() && p.Spec.Containers[0].Image == image {
				byNode[p.Spec.NodeName] = p.Metadata.Name
			}
		}
		for _, n := range k.c.Nodes {
			if n.KubeletRunning() && byNode[n.Name] == "" {
				return fmt.Errorf("no ready agent of %s on %s", image, n.Name)
			}
		}
		return nil
	})
	if err != nil {
		k.t.Fatal(err)
	}
	return byNode
}

// agentStatus runs `grapevine status -o json` in an agent pod.
func (k kube) agentStatus(ctx context.Context, pod string) (lab.Status, error) {
	var s lab.Status
	out, err := k.c.Kubectl(ctx, "-n", "kube-system", "exec", pod, "-c", "agent", "--", "grapevine", "status", "-o", "json")
	if err != nil {
		return s, err
	}
	if err := s.UnmarshalJSON(out); err != nil {
		return s, fmt.Errorf("status of %s: %w: %s", pod, err, out)
	}
	return s, nil
}

// firstCrossNodePing pings from the pinger on node-a to the one on node-b
// until a reply comes, and returns the time since the manifest was applied.
func (k kube) firstCrossNodePing(ctx context.Context, pingers []podObject, since time.Time) time.Duration {
	k.t.Helper()
	var from, to podObject
	for _, p := range pingers {
		switch p.Spec.NodeName {
		case "node-a":
			from = p
		case "node-b":
			to = p
		}
	}
	err := poll.Until(ctx, "first ping node-a -> node-b", 100*time.Millisecond, func() error {
		_, err := k.c.Kubectl(ctx, "exec", from.Metadata.Name, "--", "ping", "-c", "1", "-W", "1", to.ip().String())
		return err
	})
	if err != nil {
		k.t.Fatal(err)
	}
	return time.Since(since)
}

// snapshotDirs lists the entries of the machine's directories, to show the
// cluster left them alone.
func snapshotDirs(t *testing.T, dirs ...string) []string {
	var out []string
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if errors.Is(err, os.ErrNotExist) {
			out = append(out, d+": absent")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			info, _ := e.Info()
			out = append(out, fmt.Sprintf("%s/%s %d %s", d, e.Name(), info.Size(), info.ModTime()))
		}
	}
	return out
}

func mapValues[K comparable, V any](m map[K]V) []V {
	var vs []V
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}

// startCluster starts the three-node cluster of GRAPEVINE_KUBE_BIN in a new
// lab, with the image archive GRAPEVINE_IMAGE_ARCHIVE, busybox, pause and
// extraImages imported on every node, and stops it when the test ends. It
// returns the image the manifest is to run.
func startCluster(t *testing.T, timeout time.Duration, extraImages ...string) (context.Context, kube, *lab.Lab, string) {
	t.Helper()
	return startClusterOf(t, timeout, ipv4Cluster, extraImages...)
}

// clusterFamilies are the address families of a lab cluster.
type clusterFamilies int

const (
	ipv4Cluster      clusterFamilies = iota
	dualStackCluster                 // kubelab.Config.DualStack
	ipv6OnlyCluster                  // kubelab.Config.IPv6Only
)

func (f clusterFamilies) String() string {
	return [...]string{"IPv4", "dual-stack", "IPv6-only"}[f]
}

// startClusterOf is startCluster, of a cluster of the given families.
func startClusterOf(t *testing.T, timeout time.Duration, families clusterFamilies, extraImages ...string) (context.Context, kube, *lab.Lab, string) {
	t.Helper()
	kubeBin, archive := os.Getenv("GRAPEVINE_KUBE_BIN"), os.Getenv("GRAPEVINE_IMAGE_ARCHIVE")
	if kubeBin == "" || archive == "" {
		t.Fatal("GRAPEVINE_KUBE_BIN and GRAPEVINE_IMAGE_ARCHIVE must be set: run `make e2e-kubernetes`")
	}
	image := os.Getenv("GRAPEVINE_IMAGE")
	if image == "" {
		image = manifestImage
	}
	tools := runtimes.Require(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "crictl", "iptables")
	machineCNI := snapshotDirs(t, "/etc/cni/net.d", "/opt/cni/bin")

	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)

	images := t.TempDir()
	pause, bb := filepath.Join(images, "pause.tar"), filepath.Join(images, "busybox.tar")
	if err := runtimes.PauseImage.WriteArchive(pause, runtimes.BusyboxPath); err != nil {
		t.Fatal(err)
	}
	if err := runtimes.BusyboxImage.WriteArchive(bb, runtimes.BusyboxPath); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	c, err := kubelab.Start(ctx, kubelab.Config{
		Hosts:     l.Hosts(),
		NodeNames: nodeNames,
		Dir:       t.TempDir(),
		KubeBin:   kubeBin,
		Crictl:    tools["crictl"],
		Images:    append([]string{archive, pause, bb}, extraImages...),
		DualStack: families == dualStackCluster,
		IPv6Only:  families == ipv6OnlyCluster,
	})
	if err != nil {
		t.Fatal(err)
	}
	env.BeforeClose(l, func() { c.Close() }) // also when the run is interrupted
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs:\n%s", c.LogTails(25))
			if out, err := c.Kubectl(context.Background(), "get", "pods", "-A", "-o", "wide"); err == nil {
				t.Logf("pods:\n%s", out)
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
		if after := snapshotDirs(t, "/etc/cni/net.d", "/opt/cni/bin"); !slices.Equal(after, machineCNI) {
			t.Errorf("the machine's CNI directories changed: before %v, after %v", machineCNI, after)
		}
	})
	t.Logf("control plane and 3 kubelets registered in %s (%s)", time.Since(started).Round(100*time.Millisecond), families)
	return ctx, kube{t: t, c: c}, l, image
}

// networkPolicyOn is the manifest's ConfigMap entry that turns NetworkPolicy
// enforcement on: a socket for grapevine-policy and the agent.
var networkPolicyOn = regexp.MustCompile(`(?m)^\s*GRAPEVINE_POLICY_SOCKET: "/.+"$`)

// installGrapevine applies docs/kubernetes/grapevine.yaml as
// docs/kubernetes.md says (the gossip key Secret, then the manifest) and
// returns when it was applied. The test's copy differs from the manifest in
// the image, a lease of seconds rather than a day (so that a deleted Node's
// block is seen freed once its lease has ended); NetworkPolicy enforcement
// must be on in the manifest as it is.
func installGrapevine(ctx context.Context, k kube, l *lab.Lab, image string) time.Time {
	k.t.Helper()
	return installGrapevineWith(ctx, k, l, image, nil)
}

// installGrapevineWith is installGrapevine with settings, entries of the
// manifest's ConfigMap, changed as a user would edit them; each must be
// in the manifest.
func installGrapevineWith(ctx context.Context, k kube, l *lab.Lab, image string, settings map[string]string) time.Time {
	t := k.t
	t.Helper()
	manifest, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	key, err := lab.Run(ctx, filepath.Join(l.BinDir, "grapevine"), "keygen")
	if err != nil {
		t.Fatal(err)
	}
	k.run(ctx, "-n", "kube-system", "create", "secret", "generic", "grapevine-gossip-key",
		"--from-literal=key="+strings.TrimSpace(string(key)))
	applied := string(manifest)
	if !strings.Contains(applied, manifestLease) {
		t.Fatalf("the manifest has no %q", manifestLease)
	}
	if !networkPolicyOn.MatchString(applied) {
		t.Fatalf("the manifest does not turn NetworkPolicy on (%s)", networkPolicyOn)
	}
	lease := fmt.Sprintf("GRAPEVINE_LEASE: %q", testLease)
	applied = strings.ReplaceAll(applied, manifestLease, lease)
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		entry := regexp.MustCompile(`(?m)^(\s*)` + regexp.QuoteMeta(name) + `: .*$`)
		if !entry.MatchString(applied) {
			t.Fatalf("the manifest's ConfigMap has no %s", name)
		}
		applied = entry.ReplaceAllString(applied, fmt.Sprintf("${1}%s: %q", name, settings[name]))
	}
	if image != manifestImage {
		applied = strings.ReplaceAll(applied, "image: "+manifestImage, "image: "+image)
	}
	applyAt := time.Now()
	k.apply(ctx, applied)
	return applyAt
}
