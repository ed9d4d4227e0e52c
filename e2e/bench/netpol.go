package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/netpol"
)

// NetpolConfig configures the NetworkPolicy measurements.
type NetpolConfig struct {
	BinDir  string
	CNIPath []string
	// ApplyTrials is how many times the 1,000-pod x 200-policy ruleset is
	// compiled and applied.
	ApplyTrials int
	// ConnWindow is how long each round dials new connections; ConnRounds
	// how many rounds of each (with and without policies) alternate.
	ConnWindow time.Duration
	ConnRounds int
	Logger     *slog.Logger
}

// MeasureNetpol times compiling and applying a large policy update in one
// nftables transaction, and counts new pod-to-pod TCP connections per
// second with 50 policies in force beside none, in the same lab.
func MeasureNetpol(ctx context.Context, cfg NetpolConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ApplyTrials < 1 || cfg.ConnRounds < 1 || cfg.ConnWindow <= 0 {
		return nil, errors.New("no netpol trials")
	}
	apply, err := measurePolicyApply(ctx, cfg.ApplyTrials, log)
	if err != nil {
		return nil, err
	}
	rows := []Row{apply}
	conns, err := measurePolicyConnections(ctx, cfg, log)
	if err != nil {
		return rows, err
	}
	return append(rows, conns), nil
}

// policyScalePods and policyScalePolicies are issue 22's update size.
const (
	policyScalePods     = 1000
	policyScalePolicies = 200
	policyScaleApps     = 10
)

// measurePolicyApply compiles and applies 1,000 local pods x 200 policies
// into table inet grapevine-policy of a namespace of its own, trials times,
// each a whole new ruleset in one transaction as the agent applies it.
func measurePolicyApply(ctx context.Context, trials int, log *slog.Logger) (_ Row, err error) {
	row := Row{ID: "12a", Measure: "NetworkPolicy update: compile + apply 1,000 pods x 200 policies in one nftables transaction",
		Unit: "ms", Target: Target{Kind: AtMost, Limit: 200}}
	s := newScope()
	defer func() { err = errors.Join(err, s.close(context.WithoutCancel(ctx))) }()
	name, err := s.addNamespace(ctx, "netpol")
	if err != nil {
		return row, err
	}
	k, err := netpol.NewNFTKernelAt(lab.Namespace{Name: name}.Path())
	if err != nil {
		return row, err
	}
	defer k.Close()
	in := policyScaleInput()
	var took, compile []time.Duration
	var rs netpol.Ruleset
	for i := range trials {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		// Each trial changes one policy's port, so no two transactions
		// carry the same content.
		in.Policies[0].Spec.Ingress[0].Ports[0].Port = portNumber(int32(2000 + i))
		t0 := time.Now()
		var problems []error
		if rs, problems = netpol.Compile(in); len(problems) > 0 {
			return row, fmt.Errorf("compile: %w", errors.Join(problems...))
		}
		t1 := time.Now()
		if err := k.Apply(rs); err != nil {
			return row, fmt.Errorf("apply: %w", err)
		}
		took, compile = append(took, time.Since(t0)), append(compile, t1.Sub(t0))
		log.Debug("policy update", "trial", i+1, "took", took[i], "compile", compile[i])
	}
	rules, elements := 0, len(rs.Ingress)+len(rs.Egress)
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	for _, set := range rs.Sets {
		elements += len(set.Ranges)
	}
	row.Value, row.Samples = millis(median(took)), len(took)
	row.Note = fmt.Sprintf("median of whole-table replacements into a fresh namespace (netpol.Compile + NFTKernel.Apply, as BenchmarkCompileApply1000Pods200Policies); compile alone %.1f ms; %d rules, %d set and map elements; all trials %v",
		millis(median(compile)), rules, elements, roundAll(took))
	return row, k.Remove()
}

func portNumber(p int32) *intstr.IntOrString {
	v := intstr.FromInt32(p)
	return &v
}

// policyScaleInput is the update of row 12a: 1,000 pods of 10 apps on this
// node, 200 policies each isolating one app both ways and allowing the
// next app on one port.
func policyScaleInput() netpol.Input {
	in := netpol.Input{NodeName: "n1", Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}}
	app := func(i int) string { return "a" + strconv.Itoa(i%policyScaleApps) }
	for i := range policyScalePods {
		addr := netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)})
		in.Pods = append(in.Pods, benchPod("p"+addr.String(), addr, "n1", map[string]string{"app": app(i)}))
	}
	for i := range policyScalePolicies {
		in.Policies = append(in.Policies, benchPolicy("pol"+strconv.Itoa(i), map[string]string{"app": app(i)},
			map[string]string{"app": app(i + 1)}, int32(1000+i)))
	}
	return in
}

func benchPod(name string, addr netip.Addr, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr.String(), PodIPs: []corev1.PodIP{{IP: addr.String()}}},
	}
}

// benchPolicy isolates the pods labelled selected both ways and allows
// TCP port to and from the pods labelled peer.
func benchPolicy(name string, selected, peer map[string]string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	ports := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: portNumber(port)}}
	peers := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: peer}}}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selected},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ports}},
		},
	}
}

// connPolicies is how many policies are in force in row 12b, and connPort
// the port the client connects to.
const (
	connPolicies = 50
	connPort     = 7100
)

// measurePolicyConnections counts new TCP connections per second from a
// pod on h1 to a pod on h2, rounds alternating between no policy table and
// 50 compiled policies loaded into both hosts' namespaces: the agents run
// outside Kubernetes, where their enforcer has no API to watch, so the
// bench loads what it would (netpol.Compile, NFTKernel) itself.
func measurePolicyConnections(ctx context.Context, cfg NetpolConfig, log *slog.Logger) (_ Row, err error) {
	row := Row{ID: "12b", Measure: fmt.Sprintf("new TCP connections per second pod to pod, %d policies in force", connPolicies),
		Unit: "conn/s", Target: Target{Kind: AtLeastPeer, Limit: 0.95}}
	l, err := lab.New(ctx, lab.Config{Hosts: 2, BinDir: cfg.BinDir, CNIPath: cfg.CNIPath, Logger: log})
	if err != nil {
		return row, err
	}
	defer func() { err = errors.Join(err, l.Close(context.WithoutCancel(ctx))) }()
	if err := l.StartAgents(ctx); err != nil {
		return row, err
	}
	meshCtx, cancel := context.WithTimeout(ctx, time.Minute)
	statuses, err := lab.WaitMesh(meshCtx, l.Hosts())
	cancel()
	if err != nil {
		return row, err
	}
	h1, h2 := l.Host(1), l.Host(2)
	client, server, err := podPair(ctx, h1, h2)
	if err != nil {
		return row, err
	}
	// connPort is allowed; the port after the last policy's is not.
	for _, port := range []uint16{connPort, connPort + connPolicies} {
		ln, err := server.Listen(netip.AddrPortFrom(server.IP, port).String())
		if err != nil {
			return row, err
		}
		defer ln.Close()
		go acceptAndClose(ln)
	}

	var kernels []*netpol.NFTKernel
	defer func() {
		for _, k := range kernels {
			err = errors.Join(err, k.Remove(), k.Close())
		}
	}()
	rulesets := make([]netpol.Ruleset, 0, 2)
	for _, h := range []*lab.Host{h1, h2} {
		k, err := netpol.NewNFTKernelAt(h.Namespace.Path())
		if err != nil {
			return row, err
		}
		kernels = append(kernels, k)
		rs, problems := netpol.Compile(connPolicyInput(h.Name, statuses[h.Name].Block,
			connEndpoint{"client", client.Host.Name, client.IP}, connEndpoint{"server", server.Host.Name, server.IP}))
		if len(problems) > 0 {
			return row, fmt.Errorf("compile for %s: %w", h.Name, errors.Join(problems...))
		}
		rulesets = append(rulesets, rs)
	}
	setPolicies := func(on bool) error {
		for i, k := range kernels {
			var err error
			if on {
				err = k.Apply(rulesets[i])
			} else {
				err = k.Remove()
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	dst := netip.AddrPortFrom(server.IP, connPort).String()
	var with, without []float64
	for i := range 2 * cfg.ConnRounds {
		on := i%2 == 1
		if (i/2)%2 == 1 { // every other pair starts with policies
			on = !on
		}
		if err := setPolicies(on); err != nil {
			return row, err
		}
		rate, err := connectionRate(ctx, client.Namespace, dst, cfg.ConnWindow)
		if err != nil {
			return row, fmt.Errorf("policies in force %v: %w", on, err)
		}
		if on {
			with = append(with, rate)
		} else {
			without = append(without, rate)
		}
		log.Info("new connections", "policies", on, "per second", rate)
	}
	// The policies were in force: a port they do not allow, listened on,
	// gets no connection.
	if err := setPolicies(true); err != nil {
		return row, err
	}
	dialCtx, cancel := context.WithTimeout(ctx, time.Second)
	denied, err := client.Namespace.Dial(dialCtx, netip.AddrPortFrom(server.IP, connPort+connPolicies).String())
	cancel()
	if err == nil {
		denied.Close()
		return row, errors.New("a port no policy allows accepted a connection: the policies were not in force")
	}
	row.Value, row.Samples = median(with), len(with)
	row.Peer = &Peer{Name: "no policy", Value: median(without)}
	row.Note = fmt.Sprintf("rounds of %v alternating, each dialing one connection after another (closed with RST) from a pod on h1 to a pod on h2; "+
		"the agents run outside Kubernetes, so the bench loads 50 compiled policies selecting both pods (netpol.Compile + NFTKernel) into both hosts' namespaces itself; with %s, without %s conn/s",
		cfg.ConnWindow, formatRates(with), formatRates(without))
	return row, nil
}

// connEndpoint is a pod of row 12b as its node's enforcer knows it.
type connEndpoint struct {
	name, node string
	addr       netip.Addr
}

// connPolicyInput is what node's enforcer (its block is block) would
// compile with 50 policies in force: each selects both pods (label
// role=bench) both ways and allows one TCP port from and to them; the
// first allows connPort.
func connPolicyInput(node string, block netip.Prefix, pods ...connEndpoint) netpol.Input {
	labels := map[string]string{"role": "bench"}
	in := netpol.Input{NodeName: node, Blocks: []netip.Prefix{block},
		Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}}
	for _, p := range pods {
		in.Pods = append(in.Pods, benchPod(p.name, p.addr, p.node, labels))
	}
	for i := range connPolicies {
		in.Policies = append(in.Policies, benchPolicy("pol"+strconv.Itoa(i), labels, labels, int32(connPort+i)))
	}
	return in
}

func formatRates(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(s, ", ")
}

func acceptAndClose(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// connectionRate dials dst from ns one connection after another for
// window and returns the connections per second. Each closes with RST
// (linger 0), so no TIME_WAIT runs out the client's ports.
func connectionRate(ctx context.Context, ns lab.Namespace, dst string, window time.Duration) (float64, error) {
	var n int
	var elapsed time.Duration
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: time.Second}
		t0 := time.Now()
		for time.Since(t0) < window {
			c, err := d.DialContext(ctx, "tcp4", dst)
			if err != nil {
				return fmt.Errorf("connection %d: %w", n+1, err)
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			n++
		}
		elapsed = time.Since(t0)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}
