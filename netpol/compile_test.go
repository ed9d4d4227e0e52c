package netpol

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const localNode = "n1"

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// pod is a running pod; ports are "name:number/PROTO".
func pod(ns, name, ip, node string, labels map[string]string, ports ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	var cps []corev1.ContainerPort
	for _, s := range ports {
		name, rest, _ := strings.Cut(s, ":")
		num, proto, _ := strings.Cut(rest, "/")
		n := intstr.Parse(num)
		cps = append(cps, corev1.ContainerPort{Name: name, ContainerPort: n.IntVal, Protocol: corev1.Protocol(proto)})
	}
	p.Spec.Containers = []corev1.Container{{Name: "main", Ports: cps}}
	return p
}

func hostNetworkPod(ns, name, ip, node string, labels map[string]string) *corev1.Pod {
	p := pod(ns, name, ip, node, labels)
	p.Spec.HostNetwork = true
	return p
}

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func policy(ns, name string, podSelector *metav1.LabelSelector, types []networkingv1.PolicyType, ingress []networkingv1.NetworkPolicyIngressRule, egress []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *podSelector, PolicyTypes: types, Ingress: ingress, Egress: egress,
		},
	}
}

func port(proto corev1.Protocol, p any, endPort ...int32) networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{}
	if proto != "" {
		np.Protocol = &proto
	}
	switch v := p.(type) {
	case int:
		x := intstr.FromInt32(int32(v))
		np.Port = &x
	case string:
		x := intstr.FromString(v)
		np.Port = &x
	}
	if len(endPort) > 0 {
		np.EndPort = &endPort[0]
	}
	return np
}

func fromPods(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}
func fromNamespaces(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}
func fromBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	all         = &metav1.LabelSelector{}
)

// The cluster the table tests run in. Local pods (node n1) are web, web2,
// db and the host-network hostweb; the rest are peers on node n2.
const (
	web        = "10.0.0.10"  // default, app=web, http 80/TCP, dns 53/UDP, sig 9000/SCTP
	web2       = "10.0.0.11"  // default, app=web, http 8080/TCP
	db         = "10.0.0.12"  // default, app=db
	remoteWeb  = "10.0.1.30"  // default, app=web, on n2
	defClient  = "10.0.1.22"  // default, app=client
	prodClient = "10.0.1.20"  // prod (env=prod), app=client
	prodOther  = "10.0.1.23"  // prod, app=other
	devClient  = "10.0.1.21"  // dev (env=dev), app=client
	hostWeb    = "172.16.0.1" // hostNetwork, default, app=web, on n1
	hostClient = "172.16.0.2" // hostNetwork, default, app=client, on n2
	outside    = "192.168.5.5"
	outside2   = "192.168.6.1"
	gone       = "10.0.0.13" // default, app=web, on n1, Succeeded
)

func cluster() Input {
	done := pod("default", "done", gone, localNode, map[string]string{"app": "web"})
	done.Status.Phase = corev1.PodSucceeded
	noIP := pod("default", "pending", "", localNode, map[string]string{"app": "web"})
	return Input{
		NodeName: localNode,
		Namespaces: []*corev1.Namespace{
			namespace("default", map[string]string{"kubernetes.io/metadata.name": "default"}),
			namespace("prod", map[string]string{"env": "prod"}),
			namespace("dev", map[string]string{"env": "dev"}),
		},
		Pods: []*corev1.Pod{
			pod("default", "web", web, localNode, map[string]string{"app": "web"}, "http:80/TCP", "dns:53/UDP", "sig:9000/SCTP"),
			pod("default", "web2", web2, localNode, map[string]string{"app": "web"}, "http:8080/"),
			pod("default", "db", db, localNode, map[string]string{"app": "db"}),
			pod("default", "remoteweb", remoteWeb, "n2", map[string]string{"app": "web"}, "http:80/TCP"),
			pod("default", "client", defClient, "n2", map[string]string{"app": "client"}),
			pod("prod", "client", prodClient, "n2", map[string]string{"app": "client"}),
			pod("prod", "other", prodOther, "n2", map[string]string{"app": "other"}),
			pod("dev", "client", devClient, "n2", map[string]string{"app": "client"}),
			hostNetworkPod("default", "hostweb", hostWeb, localNode, map[string]string{"app": "web"}),
			hostNetworkPod("default", "hostclient", hostClient, "n2", map[string]string{"app": "client"}),
			done, noIP,
		},
	}
}

// check is one new connection and whether it must be allowed.
type check struct {
	src, dst string
	proto    Protocol
	port     uint16
	allowed  bool
}

func tcp(src, dst string, port uint16, allowed bool) check {
	return check{src, dst, ProtocolTCP, port, allowed}
}

func TestCompile(t *testing.T) {
	allowFrom := func(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
		return []networkingv1.NetworkPolicyIngressRule{{From: peers}}
	}
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		problems int
		checks   []check
	}{
		{
			name: "no policy allows everything",
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(web, outside, 443, true), {outside, db, ProtocolUDP, 53, true},
			},
		},
		{
			name:     "default deny ingress: a policy without rules selects all pods of its namespace on this node",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny", all, nil, nil, nil)},
			checks: []check{
				tcp(prodClient, web, 80, false), tcp(defClient, db, 5432, false), tcp(outside, web2, 8080, false),
				tcp(db, web, 80, false),              // local to local: web's ingress
				tcp(web, prodClient, 80, true),       // egress is not isolated (implicit policyTypes)
				tcp(prodClient, remoteWeb, 80, true), // selected, but enforced by its own node
				tcp(prodClient, hostWeb, 80, true),   // hostNetwork pods are never selected
				tcp(prodClient, gone, 80, true),      // a finished pod is not selected
			},
		},
		{
			name:     "default deny egress",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny", all, egressOnly, nil, nil)},
			checks: []check{
				tcp(web, prodClient, 80, false), tcp(db, outside, 443, false), tcp(web, db, 5432, false),
				tcp(prodClient, web, 80, true),
			},
		},
		{
			name:     "deny both directions",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny", all, bothTypes, nil, nil)},
			checks:   []check{tcp(web, prodClient, 80, false), tcp(prodClient, web, 80, false)},
		},
		{
			name:     "policy in another namespace selects nothing here",
			policies: []*networkingv1.NetworkPolicy{policy("prod", "deny", all, bothTypes, nil, nil)},
			checks:   []check{tcp(web, prodClient, 80, true), tcp(prodClient, web, 80, true)},
		},
		{
			name:     "podSelector selects only matching pods",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny-web", sel("app", "web"), nil, nil, nil)},
			checks:   []check{tcp(defClient, web, 80, false), tcp(defClient, web2, 80, false), tcp(defClient, db, 80, true)},
		},
		{
			name: "peer podSelector alone means the policy's namespace",
			policies: []*networkingv1.NetworkPolicy{policy("default", "from-client", sel("app", "web"), nil,
				allowFrom(fromPods(sel("app", "client"))), nil)},
			checks: []check{
				tcp(defClient, web, 80, true), tcp(prodClient, web, 80, false), tcp(devClient, web, 80, false),
				tcp(hostClient, web, 80, false), // a hostNetwork pod is its node's IP: no podSelector matches it
			},
		},
		{
			name: "peer namespaceSelector alone means all pods there",
			policies: []*networkingv1.NetworkPolicy{policy("default", "from-prod", all, nil,
				allowFrom(fromNamespaces(sel("env", "prod"))), nil)},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(prodOther, db, 1, true),
				tcp(devClient, web, 80, false), tcp(defClient, web, 80, false), tcp(outside, web, 80, false),
			},
		},
		{
			name: "namespaceSelector and podSelector in one peer both must match",
			policies: []*networkingv1.NetworkPolicy{policy("default", "clients-of-envs", all, nil,
				allowFrom(networkingv1.NetworkPolicyPeer{
					NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
						{Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "dev"}},
					}},
					PodSelector: sel("app", "client"),
				}), nil)},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(devClient, web, 80, true),
				tcp(prodOther, web, 80, false), tcp(defClient, web, 80, false),
			},
		},
		{
			name: "namespaceSelector and podSelector as two peers add up",
			policies: []*networkingv1.NetworkPolicy{policy("default", "two-peers", all, nil,
				allowFrom(fromNamespaces(sel("env", "dev")), fromPods(sel("app", "client"))), nil)},
			checks: []check{
				tcp(devClient, web, 80, true), tcp(defClient, web, 80, true),
				tcp(prodClient, web, 80, false),
			},
		},
		{
			name: "empty namespaceSelector means every namespace",
			policies: []*networkingv1.NetworkPolicy{policy("default", "clients-anywhere", all, nil,
				allowFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: all, PodSelector: sel("app", "client")}), nil)},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(devClient, web, 80, true), tcp(defClient, web, 80, true),
				tcp(prodOther, web, 80, false),
			},
		},
		{
			name: "ipBlock with except",
			policies: []*networkingv1.NetworkPolicy{policy("default", "block", all, nil,
				allowFrom(fromBlock("192.168.0.0/16", "192.168.5.0/24")), nil)},
			checks: []check{
				tcp(outside2, web, 80, true), tcp(outside, web, 80, false), tcp(prodClient, web, 80, false),
			},
		},
		{
			name: "ipBlock 0.0.0.0/0 except the pod network",
			policies: []*networkingv1.NetworkPolicy{policy("default", "world", all, nil,
				allowFrom(fromBlock("0.0.0.0/0", "10.0.0.0/8")), nil)},
			checks: []check{
				tcp(outside, web, 80, true), tcp("255.255.255.254", web, 80, true), tcp("0.0.0.1", web, 80, true),
				tcp(prodClient, web, 80, false),
			},
		},
		{
			name: "ipBlock matches a hostNetwork peer by its node address",
			policies: []*networkingv1.NetworkPolicy{policy("default", "nodes", all, nil,
				allowFrom(fromBlock("172.16.0.0/24")), nil)},
			checks: []check{tcp(hostClient, web, 80, true), tcp(defClient, web, 80, false)},
		},
		{
			name: "an empty from allows every source; an empty rule list allows none",
			policies: []*networkingv1.NetworkPolicy{
				policy("default", "open-web", sel("app", "web"), nil, []networkingv1.NetworkPolicyIngressRule{{}}, nil),
				policy("default", "closed-db", sel("app", "db"), nil, []networkingv1.NetworkPolicyIngressRule{}, nil),
			},
			checks: []check{tcp(outside, web, 80, true), tcp(outside, db, 80, false)},
		},
		{
			name: "peers that match no pod allow nothing",
			policies: []*networkingv1.NetworkPolicy{policy("default", "from-nobody", all, nil,
				allowFrom(fromPods(sel("app", "nobody"))), nil)},
			checks: []check{tcp(defClient, web, 80, false), tcp(outside, web, 80, false)},
		},
		{
			name: "numbered ports: TCP by default, UDP, SCTP",
			policies: []*networkingv1.NetworkPolicy{policy("default", "ports", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
					port("", 80), port(corev1.ProtocolUDP, 53), port(corev1.ProtocolSCTP, 9000),
				}}}, nil)},
			checks: []check{
				tcp(outside, web, 80, true), tcp(outside, web, 81, false),
				{outside, web, ProtocolUDP, 80, false}, {outside, web, ProtocolUDP, 53, true},
				{outside, web, ProtocolSCTP, 9000, true}, {outside, web, ProtocolSCTP, 9001, false},
				{outside, web, ProtocolTCP, 9000, false},
			},
		},
		{
			name: "a protocol without a port allows all its ports",
			policies: []*networkingv1.NetworkPolicy{policy("default", "udp", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, nil)}}}, nil)},
			checks: []check{
				{outside, web, ProtocolUDP, 1, true}, {outside, web, ProtocolUDP, 65535, true}, tcp(outside, web, 1, false),
			},
		},
		{
			name: "endPort makes a range",
			policies: []*networkingv1.NetworkPolicy{policy("default", "range", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{fromNamespaces(sel("env", "prod"))},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, 8000, 8100)},
				}}, nil)},
			checks: []check{
				tcp(prodClient, web, 8000, true), tcp(prodClient, web, 8050, true), tcp(prodClient, web, 8100, true),
				tcp(prodClient, web, 7999, false), tcp(prodClient, web, 8101, false), tcp(devClient, web, 8000, false),
			},
		},
		{
			name: "a named port is resolved on each selected pod",
			policies: []*networkingv1.NetworkPolicy{policy("default", "http", sel("app", "web"), nil,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
					port(corev1.ProtocolTCP, "http"), port(corev1.ProtocolUDP, "dns"), port(corev1.ProtocolSCTP, "sig"),
				}}}, nil)},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(prodClient, web, 8080, false),
				tcp(prodClient, web2, 8080, true), tcp(prodClient, web2, 80, false),
				{prodClient, web, ProtocolUDP, 53, true}, {prodClient, web2, ProtocolUDP, 53, false},
				{prodClient, web, ProtocolSCTP, 9000, true}, tcp(prodClient, web, 9000, false),
			},
		},
		{
			name: "a named port must match the protocol too",
			policies: []*networkingv1.NetworkPolicy{policy("default", "dns-as-tcp", sel("app", "web"), nil,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, "dns")}}}, nil)},
			checks: []check{tcp(prodClient, web, 53, false), {prodClient, web, ProtocolUDP, 53, false}},
		},
		{
			name: "an egress named port is resolved on the destination pod",
			policies: []*networkingv1.NetworkPolicy{policy("default", "db-to-web", sel("app", "db"), nil, nil,
				[]networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{fromPods(sel("app", "web"))},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, "http")},
				}})},
			checks: []check{
				tcp(db, web, 80, true), tcp(db, web2, 8080, true), tcp(db, remoteWeb, 80, true),
				tcp(db, web2, 80, false), tcp(db, web, 8080, false), tcp(db, defClient, 80, false),
				tcp(web, defClient, 80, true), // web is not selected
			},
		},
		{
			name: "egress to DNS only, to any destination",
			policies: []*networkingv1.NetworkPolicy{policy("default", "dns-only", all, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
					port(corev1.ProtocolUDP, 53), port(corev1.ProtocolTCP, 53),
				}}})},
			checks: []check{
				{web, outside, ProtocolUDP, 53, true}, tcp(web, outside, 53, true), tcp(web, outside, 443, false),
				{db, prodClient, ProtocolUDP, 5353, false},
			},
		},
		{
			name: "egress rules without policyTypes isolate egress too",
			policies: []*networkingv1.NetworkPolicy{policy("default", "implicit-egress", all, nil, nil,
				[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{fromBlock("192.168.0.0/16")}}})},
			checks: []check{
				tcp(web, outside, 1, true), tcp(web, prodClient, 1, false),
				tcp(prodClient, web, 80, false), // and ingress, always implied
			},
		},
		{
			name: "policyTypes Ingress ignores egress rules",
			policies: []*networkingv1.NetworkPolicy{policy("default", "ingress-only", all, ingressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{fromBlock("192.168.0.0/16")}}})},
			checks: []check{tcp(web, prodClient, 1, true), tcp(prodClient, web, 80, false)},
		},
		{
			name: "overlapping policies add up, each with its own ports",
			policies: []*networkingv1.NetworkPolicy{
				policy("default", "a", sel("app", "web"), nil, []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{fromNamespaces(sel("env", "prod"))}, Ports: []networkingv1.NetworkPolicyPort{port("", 80)},
				}}, nil),
				policy("default", "b", all, nil, []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{fromNamespaces(sel("env", "dev"))}, Ports: []networkingv1.NetworkPolicyPort{port("", 443)},
				}}, nil),
				policy("default", "deny", all, nil, nil, nil),
			},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(prodClient, web, 443, false),
				tcp(devClient, web, 443, true), tcp(devClient, web, 80, false),
				tcp(prodClient, db, 80, false), tcp(devClient, db, 443, true), // db: only b
			},
		},
		{
			name: "ingress and egress are both checked for traffic between two local pods",
			policies: []*networkingv1.NetworkPolicy{
				policy("default", "web-in-from-db", sel("app", "web"), nil, allowFrom(fromPods(sel("app", "db"))), nil),
				policy("default", "db-out-to-nothing", sel("app", "db"), egressOnly, nil, nil),
			},
			checks: []check{tcp(db, web, 80, false), tcp(defClient, web, 80, false), tcp(defClient, db, 80, true)},
		},
		{
			name: "invalid CIDR and protocol match nothing and are reported",
			policies: []*networkingv1.NetworkPolicy{policy("default", "bad", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{fromBlock("192.168.0.0/33")}},
					{Ports: []networkingv1.NetworkPolicyPort{port("ICMP", 1)}},
				}, nil)},
			problems: 2,
			checks:   []check{tcp(outside, web, 80, false), tcp(outside, web, 1, false)},
		},
		{
			name: "an invalid pod selector drops the policy and is reported",
			policies: []*networkingv1.NetworkPolicy{policy("default", "bad-selector", &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Near"}},
			}, nil, nil, nil)},
			problems: 1,
			checks:   []check{tcp(outside, web, 80, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := cluster()
			in.Policies = tt.policies
			rs, problems := Compile(in)
			if len(problems) != tt.problems {
				t.Errorf("problems %v, want %d", problems, tt.problems)
			}
			if len(tt.checks) == 0 && len(tt.policies) > 0 {
				t.Fatal("a case without checks asserts nothing")
			}
			checkAllows(t, rs, tt.checks)
		})
	}
}

// TestCompileIsDeterministic: the same cluster in any order compiles to the
// same ruleset, so an unchanged cluster never looks changed.
func TestCompileIsDeterministic(t *testing.T) {
	in := scaleInput(60, 20, 3, false)
	want, _ := Compile(in)
	for range 5 {
		shuffled := in
		shuffled.Pods = append([]*corev1.Pod(nil), in.Pods...)
		shuffled.Policies = append([]*networkingv1.NetworkPolicy(nil), in.Policies...)
		rand.Shuffle(len(shuffled.Pods), func(i, j int) { shuffled.Pods[i], shuffled.Pods[j] = shuffled.Pods[j], shuffled.Pods[i] })
		rand.Shuffle(len(shuffled.Policies), func(i, j int) {
			shuffled.Policies[i], shuffled.Policies[j] = shuffled.Policies[j], shuffled.Policies[i]
		})
		got, _ := Compile(shuffled)
		if !reflect.DeepEqual(got, want) {
			t.Fatal("a shuffled input compiled to another ruleset")
		}
	}
}

// TestCompileScalesByPoliciesAndPods: the ruleset's rules grow with policies
// and its set elements with pods times distinct peer sets, never with local
// pods times peers; every selected pod is one map element per direction.
func TestCompileScalesByPoliciesAndPods(t *testing.T) {
	const pods, policies, apps = 1000, 200, 10
	in := scaleInput(pods, policies, apps, false)
	rs, problems := Compile(in)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	rules := 0
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	elements := 0
	for _, s := range rs.Sets {
		elements += len(s.Ranges)
	}
	local := pods / 2
	if len(rs.Ingress) != local || len(rs.Egress) != local {
		t.Errorf("map elements: ingress %d, egress %d, want %d each (one per local pod)", len(rs.Ingress), len(rs.Egress), local)
	}
	// Each policy has one ingress and one egress rule with one port: a
	// rule each, plus a group chain per distinct combination of policies.
	if max := 2*policies + 2*(apps+1)*(policies/apps+2); rules > max {
		t.Errorf("%d rules, want at most %d", rules, max)
	}
	// Peers are one app's pods: at most apps distinct sets, shared.
	if len(rs.Sets) > apps {
		t.Errorf("%d sets, want at most %d (rules with the same peers share a set)", len(rs.Sets), apps)
	}
	if elements > pods {
		t.Errorf("%d set elements, want at most %d", elements, pods)
	}
	t.Logf("%d chains, %d rules, %d sets, %d set ranges, %d+%d map elements", len(rs.Chains), rules, len(rs.Sets), elements, len(rs.Ingress), len(rs.Egress))
}

// scaleInput is a cluster of pods pods (every other one on this node, or
// all of them with allLocal) in one namespace, labelled app=a<i%apps>, and
// policies policies, each selecting one app and allowing TCP from and to
// the next app.
func scaleInput(pods, policies, apps int, allLocal bool) Input {
	in := Input{NodeName: localNode, Namespaces: []*corev1.Namespace{namespace("default", nil)}}
	for i := range pods {
		node := localNode
		if i%2 == 1 && !allLocal {
			node = "n2"
		}
		addr := netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)})
		in.Pods = append(in.Pods, pod("default", "p"+addr.String(), addr.String(), node, map[string]string{"app": appName(i % apps)}))
	}
	for i := range policies {
		peer := []networkingv1.NetworkPolicyPeer{fromPods(sel("app", appName((i+1)%apps)))}
		ports := []networkingv1.NetworkPolicyPort{port("", 1000+i)}
		in.Policies = append(in.Policies, policy("default", "pol"+appName(i), sel("app", appName(i%apps)), bothTypes,
			[]networkingv1.NetworkPolicyIngressRule{{From: peer, Ports: ports}},
			[]networkingv1.NetworkPolicyEgressRule{{To: peer, Ports: ports}}))
	}
	return in
}

func appName(i int) string { return "a" + strconv.Itoa(i) }

// withIPv6 gives every pod of in a second, IPv6 address, fd00:: and its
// IPv4 address, as on a dual-stack cluster.
func withIPv6(in Input) Input {
	for i, p := range in.Pods {
		v4, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !v4.Is4() {
			continue
		}
		b := v4.As16()
		b[0], b[1], b[10], b[11] = 0xfd, 0x00, 0, 0
		p = p.DeepCopy()
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: netip.AddrFrom16(b).String()})
		in.Pods[i] = p
	}
	return in
}

func TestAddrRanges(t *testing.T) {
	r := func(a, b string) AddrRange { return AddrRange{netip.MustParseAddr(a), netip.MustParseAddr(b)} }
	tests := []struct {
		name string
		got  []AddrRange
		want []AddrRange
	}{
		{"prefix", []AddrRange{prefixRange(netip.MustParsePrefix("10.1.2.0/23"))}, []AddrRange{r("10.1.2.0", "10.1.3.255")}},
		{"whole space", []AddrRange{prefixRange(netip.MustParsePrefix("0.0.0.0/0"))}, []AddrRange{r("0.0.0.0", "255.255.255.255")}},
		{"unmasked prefix", []AddrRange{prefixRange(netip.MustParsePrefix("10.1.2.3/24"))}, []AddrRange{r("10.1.2.0", "10.1.2.255")}},
		{"merge adjacent and overlapping", normalize([]AddrRange{r("10.0.0.5", "10.0.0.9"), r("10.0.0.1", "10.0.0.4"), r("10.0.0.8", "10.0.0.20"), r("10.0.0.30", "10.0.0.30")}),
			[]AddrRange{r("10.0.0.1", "10.0.0.20"), r("10.0.0.30", "10.0.0.30")}},
		{"merge up to the last address", normalize([]AddrRange{r("255.255.255.255", "255.255.255.255"), r("255.255.255.0", "255.255.255.254")}),
			[]AddrRange{r("255.255.255.0", "255.255.255.255")}},
		{"except in the middle", subtract([]AddrRange{r("0.0.0.0", "255.255.255.255")}, []AddrRange{r("10.0.0.0", "10.255.255.255")}),
			[]AddrRange{r("0.0.0.0", "9.255.255.255"), r("11.0.0.0", "255.255.255.255")}},
		{"except at both edges", subtract([]AddrRange{r("10.0.0.0", "10.0.0.255")}, []AddrRange{r("10.0.0.0", "10.0.0.15"), r("10.0.0.240", "10.0.0.255")}),
			[]AddrRange{r("10.0.0.16", "10.0.0.239")}},
		{"except everything", subtract([]AddrRange{r("10.0.0.0", "10.0.0.255")}, []AddrRange{r("10.0.0.0", "10.0.1.0")}), nil},
		{"IPv6 prefix", []AddrRange{prefixRange(netip.MustParsePrefix("fd00:10:244::/120"))}, []AddrRange{r("fd00:10:244::", "fd00:10:244::ff")}},
		{"whole IPv6 space", []AddrRange{prefixRange(netip.MustParsePrefix("::/0"))}, []AddrRange{r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}},
		{"IPv4 and IPv6 never merge", normalize([]AddrRange{r("::", "::5"), r("255.255.255.0", "255.255.255.255")}),
			[]AddrRange{r("255.255.255.0", "255.255.255.255"), r("::", "::5")}},
		{"IPv6 adjacent merge, IPv4 except cuts nothing", subtract(normalize([]AddrRange{r("2001:db8::10", "2001:db8::1f"), r("2001:db8::", "2001:db8::f")}), []AddrRange{r("0.0.0.0", "255.255.255.255")}),
			[]AddrRange{r("2001:db8::", "2001:db8::1f")}},
		{"IPv6 except in the middle", subtract([]AddrRange{prefixRange(netip.MustParsePrefix("2001:db8::/32"))}, []AddrRange{prefixRange(netip.MustParsePrefix("2001:db8:1::/48"))}),
			[]AddrRange{r("2001:db8::", "2001:db8:0:ffff:ffff:ffff:ffff:ffff"), r("2001:db8:2::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")}},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// BenchmarkCompile1000Pods200Policies is the pure half of
// BenchmarkCompileApply1000Pods200Policies, which needs root.
func BenchmarkCompile1000Pods200Policies(b *testing.B) {
	in := scaleInput(1000, 200, 10, true)
	for b.Loop() {
		if _, problems := Compile(in); len(problems) > 0 {
			b.Fatal(problems)
		}
	}
}

// TestCompileDeniesUnknownLocalAddresses: with the node's block known, an
// address of it that no local pod holds (yet) gets no new connection
// either way, policy or none, while known pods keep what their policies
// allow and other nodes' addresses are left to their nodes.
func TestCompileDeniesUnknownLocalAddresses(t *testing.T) {
	const unknown = "10.0.0.99" // in n1's block, no pod has it
	allowAll := []networkingv1.NetworkPolicyIngressRule{{}}
	tests := []struct {
		name     string
		block    string
		policies []*networkingv1.NetworkPolicy
		checks   []check
	}{
		{
			name:  "no policy: only the unknown address is denied",
			block: "10.0.0.0/24",
			checks: []check{
				tcp(unknown, outside, 80, false), tcp(outside, unknown, 80, false),
				tcp(unknown, web, 80, false), tcp(web, unknown, 80, false),
				tcp(unknown, prodClient, 80, false), tcp(prodClient, unknown, 80, false),
				tcp(prodClient, web, 80, true), tcp(web, db, 5432, true), tcp(web, outside, 443, true),
				tcp(gone, outside, 80, false),        // a finished pod's address is nobody's now
				tcp(prodClient, devClient, 80, true), // another node's block: its own business
			},
		},
		{
			name:     "an allow-all policy does not open an unknown address",
			block:    "10.0.0.0/24",
			policies: []*networkingv1.NetworkPolicy{policy("default", "all", all, nil, allowAll, nil)},
			checks:   []check{tcp(prodClient, unknown, 80, false), tcp(prodClient, web, 80, true)},
		},
		{
			name:   "no block known yet: nothing denied for it",
			checks: []check{tcp(unknown, outside, 80, true), tcp(outside, unknown, 80, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := cluster()
			in.Policies = tt.policies
			if tt.block != "" {
				in.Blocks = []netip.Prefix{netip.MustParsePrefix(tt.block)}
			}
			rs, problems := Compile(in)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			checkAllows(t, rs, tt.checks)
		})
	}
}

// checkAllows checks that rs allows exactly the checks' allowed packets.
func checkAllows(t *testing.T, rs Ruleset, checks []check) {
	t.Helper()
	for _, c := range checks {
		if got := rs.Allows(c.packet()); got != c.allowed {
			t.Errorf("%s -> %s proto %d port %d: allowed %v, want %v", c.src, c.dst, c.proto, c.port, got, c.allowed)
		}
	}
}

// packet is c as the model sees it; for ICMPv6, port is the message type.
func (c check) packet() Packet {
	p := Packet{Src: netip.MustParseAddr(c.src), Dst: netip.MustParseAddr(c.dst), Protocol: c.proto, Port: c.port}
	if c.proto == ProtocolICMPv6 {
		p.Port, p.ICMPType = 0, uint8(c.port)
	}
	return p
}

func icmp6(src, dst string, icmpType uint8, allowed bool) check {
	return check{src, dst, ProtocolICMPv6, uint16(icmpType), allowed}
}

// The IPv6 addresses of the dual-stack cluster: n1's block6 is
// fd00:10:244::/120, n2's fd00:10:244:1::/120.
const (
	block6      = "fd00:10:244::/120"
	web6        = "fd00:10:244::a"    // web's second address
	db6         = "fd00:10:244::c"    // db's
	only6       = "fd00:10:244::d"    // default, app=web, IPv6 only, http 80/TCP, on n1
	unknown6    = "fd00:10:244::99"   // in n1's block6, no pod has it
	prodClient6 = "fd00:10:244:1::14" // prod's client's
	remoteWeb6  = "fd00:10:244:1::1e" // remoteweb's
	outside6    = "2001:db8::5"       // no pod
	outside6b   = "2001:db8:1::1"     // no pod
	gateway6    = "fe80::ecee:eeff:feee:eeee"
)

// dualStackCluster is cluster() with IPv6 addresses for some of its pods
// and a local IPv6-only pod (see addIPv6).
func dualStackCluster() Input {
	return addIPv6(cluster(), map[string]string{web: web6, db: db6, prodClient: prodClient6, remoteWeb: remoteWeb6})
}

// addIPv6 gives the pods of in whose IPv4 address second names that IPv6
// address as well (status.podIPs lists the IPv4 address first, as on a
// dual-stack cluster), adds a local IPv6-only pod only6, and sets both of
// this node's blocks.
func addIPv6(in Input, second map[string]string) Input {
	for i, p := range in.Pods {
		if ip6, ok := second[p.Status.PodIP]; ok {
			p = p.DeepCopy()
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip6})
			in.Pods[i] = p
		}
	}
	in.Pods = append(in.Pods, pod("default", "only6", only6, localNode, map[string]string{"app": "web"}, "http:80/TCP"))
	in.Blocks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix(block6)}
	return in
}

// TestCompileIPv6: a dual-stack pod's IPv6 address is isolated exactly like
// its IPv4 one, peers match by both, ipBlocks of either family allow only
// that family, unknown addresses of the node's IPv6 block are denied, and
// neighbour discovery always passes.
func TestCompileIPv6(t *testing.T) {
	deny := policy("default", "deny", all, nil, nil, nil)
	ingressFrom := func(name string, ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
		return policy("default", name, all, nil, []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}, nil)
	}
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
	}{
		{
			name: "no policy: only unknown addresses of both blocks are denied",
			checks: []check{
				tcp(prodClient6, web6, 80, true), tcp(outside6, only6, 80, true), tcp(web6, outside6, 443, true),
				tcp(unknown6, outside6, 80, false), tcp(outside6, unknown6, 80, false), tcp(web6, unknown6, 80, false),
				tcp("10.0.0.99", outside, 80, false),
				tcp(prodClient6, "fd00:10:244:1::99", 80, true), // another node's block6: its own business
			},
		},
		{
			name:     "default deny isolates both addresses of a pod and an IPv6-only pod",
			policies: []*networkingv1.NetworkPolicy{deny},
			checks: []check{
				tcp(prodClient6, web6, 80, false), tcp(prodClient, web, 80, false), tcp(outside6, only6, 80, false),
				udp(outside6, db6, 53, false), tcp(db6, web6, 80, false),
				tcp(web6, outside6, 80, true), tcp(only6, prodClient6, 80, true), // egress is not isolated
			},
		},
		{
			name:     "allow from a namespace admits its pods' IPv6 addresses",
			policies: []*networkingv1.NetworkPolicy{deny, ingressFrom("from-prod", nil, fromNamespaces(sel("env", "prod")))},
			checks: []check{
				tcp(prodClient6, web6, 80, true), tcp(prodClient6, only6, 80, true), tcp(prodClient, web, 80, true),
				tcp(remoteWeb6, web6, 80, false), tcp(outside6, db6, 5432, false),
			},
		},
		{
			name: "an IPv6 ipBlock with except allows only its IPv6 addresses",
			policies: []*networkingv1.NetworkPolicy{ingressFrom("block6", []networkingv1.NetworkPolicyPort{port("", 80)},
				fromBlock("2001:db8::/32", "2001:db8::/48"))},
			checks: []check{
				tcp(outside6b, web6, 80, true), tcp(outside6b, only6, 80, true), tcp(outside6b, web6, 443, false),
				tcp(outside6, web6, 80, false), // in the except
				tcp(outside, web, 80, false), tcp(prodClient6, web6, 80, false),
			},
		},
		{
			name:     "an IPv4 ipBlock, even 0.0.0.0/0, allows no IPv6 address, and ::/0 no IPv4 one",
			policies: []*networkingv1.NetworkPolicy{ingressFrom("world4", nil, fromBlock("0.0.0.0/0")), policy("default", "deny-db", sel("app", "db"), nil, nil, nil)},
			checks: []check{
				tcp(outside2, web, 80, true), tcp(outside6, web6, 80, false), tcp(outside6, only6, 80, false),
			},
		},
		{
			name:     "::/0 with an IPv4 except allows all of IPv6 and no IPv4",
			policies: []*networkingv1.NetworkPolicy{ingressFrom("world6", nil, fromBlock("::/0", "192.168.0.0/16"))},
			checks: []check{
				tcp(outside6, web6, 80, true), tcp(prodClient6, db6, 5432, true), tcp(outside, web, 80, false), tcp(prodClient, db, 5432, false),
			},
		},
		{
			name: "egress to pods and an IPv6 block by named and numbered port",
			policies: []*networkingv1.NetworkPolicy{policy("default", "db-out", sel("app", "db"), egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{fromPods(sel("app", "web"))}, Ports: []networkingv1.NetworkPolicyPort{port("", "http")}},
					{To: []networkingv1.NetworkPolicyPeer{fromBlock("2001:db8::/32")}, Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, 53)}},
				})},
			checks: []check{
				tcp(db6, web6, 80, true), tcp(db6, only6, 80, true), tcp(db6, remoteWeb6, 80, true), tcp(db, web, 80, true),
				tcp(db6, web6, 8080, false), udp(db6, outside6, 53, true), tcp(db6, outside6, 53, false), udp(db, outside, 53, false),
			},
		},
		{
			name:     "neighbour discovery passes a default deny and the unknown addresses; other ICMPv6 does not",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny-both", all, bothTypes, nil, nil)},
			checks: []check{
				icmp6(web6, gateway6, 135, true), icmp6(gateway6, web6, 136, true), icmp6(unknown6, gateway6, 133, true),
				icmp6(gateway6, unknown6, 137, true),
				icmp6(outside6, web6, 128, false), icmp6(web6, outside6, 128, false), icmp6(unknown6, outside6, 128, false),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := dualStackCluster()
			in.Policies = tt.policies
			rs, problems := Compile(in)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			checkAllows(t, rs, tt.checks)
		})
	}
}

// TestCompileIPv6OnlyNode: on an IPv6-only node the one block is IPv6
// (node.json's block field; no block6): its unknown addresses are denied
// both ways as on a dual-stack node, its pods are isolated by policy, and
// neighbour discovery passes.
func TestCompileIPv6OnlyNode(t *testing.T) {
	const (
		web6     = "fd00:10:244::a"
		client6  = "fd00:10:244:1::14" // on n2
		unknown6 = "fd00:10:244::99"   // in this node's block, no pod has it
	)
	in := Input{
		NodeName:   localNode,
		Namespaces: []*corev1.Namespace{namespace("default", map[string]string{"kubernetes.io/metadata.name": "default"})},
		Pods: []*corev1.Pod{
			pod("default", "web", web6, localNode, map[string]string{"app": "web"}, "http:80/TCP"),
			pod("default", "client", client6, "n2", map[string]string{"app": "client"}),
		},
		Blocks: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/120")},
	}
	for _, tt := range []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
	}{
		{
			name: "no policy: only the unknown address is denied",
			checks: []check{
				tcp(client6, web6, 80, true), tcp(web6, outside6, 443, true),
				tcp(unknown6, outside6, 80, false), tcp(outside6, unknown6, 80, false), tcp(client6, unknown6, 80, false),
				tcp(client6, "fd00:10:244:1::99", 80, true), // another node's block: its own business
			},
		},
		{
			name:     "default deny isolates the pod; neighbour discovery passes",
			policies: []*networkingv1.NetworkPolicy{policy("default", "deny", all, nil, nil, nil)},
			checks: []check{
				tcp(client6, web6, 80, false), tcp(outside6, web6, 80, false),
				icmp6(gateway6, web6, 135, true), icmp6(web6, gateway6, 136, true),
				tcp(unknown6, outside6, 80, false),
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := in
			in.Policies = tt.policies
			rs, problems := Compile(in)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			checkAllows(t, rs, tt.checks)
		})
	}
}

// TestCompileIPv6VerdictMaps: each address of a dual-stack pod has its own
// verdict map entry, both leading to the pod's one group chain, and the
// unknown ranges keep the families apart.
func TestCompileIPv6VerdictMaps(t *testing.T) {
	in := dualStackCluster()
	in.Policies = []*networkingv1.NetworkPolicy{policy("default", "deny-web", sel("app", "web"), nil, nil, nil)}
	rs, problems := Compile(in)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	v4, v6 := netip.MustParseAddr(web), netip.MustParseAddr(web6)
	if rs.Ingress[v4] == "" || rs.Ingress[v4] != rs.Ingress[v6] || rs.Ingress[netip.MustParseAddr(only6)] == "" {
		t.Errorf("ingress map %v: want %s, %s and %s in one group", rs.Ingress, web, web6, only6)
	}
	if _, ok := rs.Ingress[netip.MustParseAddr(db6)]; ok {
		t.Errorf("ingress map %v: db is selected by no policy", rs.Ingress)
	}
	for _, r := range rs.Unknown {
		if r.First.Is4() != r.Last.Is4() {
			t.Errorf("unknown range %s-%s mixes families", r.First, r.Last)
		}
	}
	if got := len(ofFamily(rs.Unknown, true)); got == 0 {
		t.Errorf("unknown ranges %v: none of block6 %s", rs.Unknown, block6)
	}
}
