// Package kubernetes holds the manifest that deploys Grapevine on a kubeadm
// cluster (grapevine.yaml). Its tests decode the manifest strictly into the
// Kubernetes API types and check it against the agent's flags and defaults in
// cmd/grapevine and against the image the Dockerfile builds, because no
// cluster or container engine is at hand to find a mismatch at runtime.
package kubernetes

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/grapevine-net/grapevine/docs/internal/agentcli"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/kubejoin"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

const (
	manifestPath = "grapevine.yaml"
	agentDir     = "../../cmd/grapevine"
	policyDir    = "../../cmd/grapevine-policy"
	cmdDir       = "../../cmd"
	dockerfile   = "../../Dockerfile"
	makefile     = "../../Makefile"
	namespace    = "kube-system"
)

// manifest is grapevine.yaml, one field per object it must contain.
type manifest struct {
	serviceAccount *corev1.ServiceAccount
	clusterRole    *rbacv1.ClusterRole
	binding        *rbacv1.ClusterRoleBinding
	role           *rbacv1.Role
	roleBinding    *rbacv1.RoleBinding
	config         *corev1.ConfigMap
	daemonSet      *appsv1.DaemonSet
}

// loadManifest decodes every document of grapevine.yaml into its API type,
// rejecting unknown fields (a misspelt or misplaced key) and unexpected or
// repeated kinds.
func loadManifest(t *testing.T) manifest {
	t.Helper()
	raw, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		if isBlank(doc) {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			obj = setOnce(t, &m.serviceAccount)
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			obj = setOnce(t, &m.clusterRole)
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			obj = setOnce(t, &m.binding)
		case "rbac.authorization.k8s.io/v1 Role":
			obj = setOnce(t, &m.role)
		case "rbac.authorization.k8s.io/v1 RoleBinding":
			obj = setOnce(t, &m.roleBinding)
		case "v1 ConfigMap":
			obj = setOnce(t, &m.config)
		case "apps/v1 DaemonSet":
			obj = setOnce(t, &m.daemonSet)
		default:
			t.Fatalf("document %d: unexpected %s %s", i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, tm.Kind, err)
		}
	}
	if m.serviceAccount == nil || m.clusterRole == nil || m.binding == nil || m.role == nil || m.roleBinding == nil || m.config == nil || m.daemonSet == nil {
		t.Fatalf("manifest lacks an object: %+v", m)
	}
	return m
}

// isBlank reports whether a YAML document holds only comments and space.
func isBlank(doc string) bool {
	for line := range strings.Lines(doc) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

func setOnce[T any](t *testing.T, p **T) *T {
	t.Helper()
	if *p != nil {
		t.Fatalf("manifest has a second %T", *p)
	}
	*p = new(T)
	return *p
}

func (m manifest) container(t *testing.T, name string, init bool) *corev1.Container {
	t.Helper()
	list := m.daemonSet.Spec.Template.Spec.Containers
	if init {
		list = m.daemonSet.Spec.Template.Spec.InitContainers
	}
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	t.Fatalf("DaemonSet has no container %q (init: %v)", name, init)
	return nil
}

func (m manifest) volume(t *testing.T, name string) *corev1.Volume {
	t.Helper()
	for i, v := range m.daemonSet.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &m.daemonSet.Spec.Template.Spec.Volumes[i]
		}
	}
	t.Fatalf("DaemonSet has no volume %q", name)
	return nil
}

// hostPathMount returns the host path mounted at mountPath in c, failing if
// nothing or something other than a host directory is mounted there.
func (m manifest) hostPathMount(t *testing.T, c *corev1.Container, mountPath string) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != mountPath {
			continue
		}
		v := m.volume(t, vm.Name)
		if v.HostPath == nil {
			t.Fatalf("%s: %s is volume %q, not a hostPath", c.Name, mountPath, vm.Name)
		}
		if vm.ReadOnly {
			t.Errorf("%s: %s is mounted read-only", c.Name, mountPath)
		}
		return v.HostPath.Path
	}
	t.Fatalf("%s: nothing mounted at %s", c.Name, mountPath)
	return ""
}

func envOf(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

func TestObjectsInOneNamespace(t *testing.T) {
	m := loadManifest(t)
	for kind, meta := range map[string]metav1.ObjectMeta{
		"ServiceAccount": m.serviceAccount.ObjectMeta,
		"ConfigMap":      m.config.ObjectMeta,
		"Role":           m.role.ObjectMeta,
		"RoleBinding":    m.roleBinding.ObjectMeta,
		"DaemonSet":      m.daemonSet.ObjectMeta,
	} {
		if meta.Namespace != namespace {
			t.Errorf("%s %s is in namespace %q, want %s", kind, meta.Name, meta.Namespace, namespace)
		}
	}
}

// TestRBACIsLeast: the agent reads Node objects for seed addresses, and
// grapevine-policy (the same service account) Pods, Namespaces and
// NetworkPolicies; the agent reads and creates the ledger's record; and
// they must be able to do nothing else with the API.
func TestRBACIsLeast(t *testing.T) {
	m := loadManifest(t)
	read := []string{"get", "list", "watch"}
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: read},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: read},
	}
	rules := m.clusterRole.Rules
	if len(rules) != len(want) {
		t.Fatalf("ClusterRole has %d rules, want exactly %d: %+v", len(rules), len(want), rules)
	}
	for i, got := range rules {
		slices.Sort(got.Verbs)
		if !slices.Equal(got.APIGroups, want[i].APIGroups) || !slices.Equal(got.Resources, want[i].Resources) ||
			!slices.Equal(got.Verbs, want[i].Verbs) || len(got.ResourceNames) != 0 || len(got.NonResourceURLs) != 0 {
			t.Errorf("ClusterRole rule %d = %+v, want %+v", i, got, want[i])
		}
	}

	b := m.binding
	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != m.clusterRole.Name {
		t.Errorf("ClusterRoleBinding refers to %s %s, want ClusterRole %s", b.RoleRef.Kind, b.RoleRef.Name, m.clusterRole.Name)
	}
	wantSubject := rbacv1.Subject{Kind: "ServiceAccount", Name: m.serviceAccount.Name, Namespace: namespace}
	if !slices.Equal(b.Subjects, []rbacv1.Subject{wantSubject}) {
		t.Errorf("ClusterRoleBinding subjects = %+v, want only %+v", b.Subjects, wantSubject)
	}

	// The ledger's record: get on that one ConfigMap, create of ConfigMaps
	// (RBAC cannot restrict a create by name), in the record's namespace.
	if m.role.Namespace != kubejoin.LedgerRecordNamespace {
		t.Errorf("Role in namespace %q, the agent keeps the ledger's record in %q", m.role.Namespace, kubejoin.LedgerRecordNamespace)
	}
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{kubejoin.LedgerRecordName}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
	}
	if len(m.role.Rules) != len(wantRules) {
		t.Fatalf("Role has %d rules, want exactly %d: %+v", len(m.role.Rules), len(wantRules), m.role.Rules)
	}
	for i, got := range m.role.Rules {
		want := wantRules[i]
		if !slices.Equal(got.APIGroups, want.APIGroups) || !slices.Equal(got.Resources, want.Resources) || !slices.Equal(got.Verbs, want.Verbs) ||
			!slices.Equal(got.ResourceNames, want.ResourceNames) || len(got.NonResourceURLs) != 0 {
			t.Errorf("Role rule %d = %+v, want %+v", i, got, want)
		}
	}
	rb := m.roleBinding
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != m.role.Name || rb.Namespace != m.role.Namespace {
		t.Errorf("RoleBinding %s/%s refers to %s %s, want Role %s/%s", rb.Namespace, rb.Name, rb.RoleRef.Kind, rb.RoleRef.Name, m.role.Namespace, m.role.Name)
	}
	if !slices.Equal(rb.Subjects, []rbacv1.Subject{wantSubject}) {
		t.Errorf("RoleBinding subjects = %+v, want only %+v", rb.Subjects, wantSubject)
	}
	if sa := m.daemonSet.Spec.Template.Spec.ServiceAccountName; sa != m.serviceAccount.Name {
		t.Errorf("DaemonSet runs as service account %q, want %q", sa, m.serviceAccount.Name)
	}
}

// TestDaemonSetScheduling: one agent on every node, including control-plane
// nodes and nodes that are not ready (they have no pod network until the
// agent runs), replaced one node at a time.
func TestDaemonSetScheduling(t *testing.T) {
	m := loadManifest(t)
	ds := m.daemonSet
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork is off: the agent must program the host's routes and gossip on the host's address")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", spec.PriorityClassName)
	}
	tolerateAll := slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	})
	if !tolerateAll {
		t.Errorf("tolerations %+v do not tolerate every taint (operator: Exists with no key or effect)", spec.Tolerations)
	}

	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil {
		t.Fatalf("updateStrategy = %+v, want RollingUpdate with maxUnavailable", u)
	}
	if mu := u.RollingUpdate.MaxUnavailable; mu.String() != "1" {
		t.Errorf("maxUnavailable = %s, want 1", mu.String())
	}

	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %s does not match the pod template's labels %v", sel, ds.Spec.Template.Labels)
	}
}

// TestAgentPrivileges: the agent gets the capabilities its kernel calls
// need (routes, nftables, ip_forward; the raw ICMP socket of the data-path
// probes) and no more.
func TestAgentPrivileges(t *testing.T) {
	m := loadManifest(t)
	agent := m.container(t, "agent", false)
	sc := agent.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("agent has no securityContext with capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("agent is privileged; it needs only NET_ADMIN and NET_RAW")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("agent drops %v, want ALL", sc.Capabilities.Drop)
	}
	if want := []corev1.Capability{"NET_ADMIN", "NET_RAW"}; !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("agent adds capabilities %v, want %v", sc.Capabilities.Add, want)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("agent may gain privileges through setuid binaries; set allowPrivilegeEscalation: false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("agent's root filesystem is writable; it writes only to its host mounts")
	}

	install := m.container(t, "install-cni", true)
	isc := install.SecurityContext
	if isc == nil || isc.Capabilities == nil || len(isc.Capabilities.Add) != 0 ||
		!slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("install-cni securityContext = %+v, want every capability dropped", isc)
	}
}

// TestMounts: the agent writes the conflist, node.json and its state on the
// host, at the same paths it writes into the conflist for the CNI plugins
// that the container runtime runs on the host; the init container installs
// the plugins into /opt/cni/bin.
func TestMounts(t *testing.T) {
	m := loadManifest(t)
	agent := m.container(t, "agent", false)
	for env, dir := range map[string]string{
		"GRAPEVINE_CNI_CONF_DIR": "/etc/cni/net.d",
		"GRAPEVINE_STATE_DIR":    "/var/lib/grapevine",
		"GRAPEVINE_RUN_DIR":      "/run/grapevine",
	} {
		if host := m.hostPathMount(t, agent, dir); host != dir {
			t.Errorf("agent's %s is the host's %s; the paths must be equal because the conflist names them", dir, host)
		}
		if e, ok := envOf(agent, env); !ok || e.Value != dir {
			t.Errorf("agent's %s = %q, want %s", env, e.Value, dir)
		}
	}

	// The image has no shell: the init container runs the image's entrypoint
	// (grapevine) with `install-cni`, into the host's /opt/cni/bin, from the
	// directory where the image keeps the plugins.
	install := m.container(t, "install-cni", true)
	if len(install.Command) != 0 {
		t.Errorf("install-cni overrides the entrypoint with %q; the image has only grapevine", install.Command)
	}
	if len(install.Args) == 0 || install.Args[0] != "install-cni" {
		t.Fatalf("install-cni runs `grapevine %s`, want `grapevine install-cni`", strings.Join(install.Args, " "))
	}
	spec := agentSpec(t)
	flags, err := parseFlags(install.Args[1:], spec.Commands["install-cni"])
	if err != nil {
		t.Fatalf("install-cni args %q: %v", install.Args, err)
	}
	target := flags["cni-bin-dir"]
	if target == "" {
		t.Fatalf("install-cni args %q do not set --cni-bin-dir to the mounted host directory", install.Args)
	}
	if host := m.hostPathMount(t, install, target); host != "/opt/cni/bin" {
		t.Errorf("install-cni writes to the host's %s, want /opt/cni/bin", host)
	}
	from, ok := flags["from"]
	if !ok {
		from = spec.Consts["DefaultImageCNIDir"]
	}
	if dir := imagePluginDir(t); from != dir {
		t.Errorf("install-cni copies from %q, the image has the plugins in %q", from, dir)
	}
}

// parseFlags reads --name=value and --name value arguments, refusing flags
// the command does not declare and positional arguments.
func parseFlags(args []string, known map[string]bool) (map[string]string, error) {
	flags := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			return nil, fmt.Errorf("positional argument %q", args[i])
		}
		name, value, hasValue := strings.Cut(name, "=")
		if !known[name] {
			return nil, fmt.Errorf("--%s is not a flag of the command (it has %v)", name, known)
		}
		if !hasValue {
			if i+1 == len(args) {
				return nil, fmt.Errorf("--%s has no value", name)
			}
			i++
			value = args[i]
		}
		flags[name] = value
	}
	return flags, nil
}

// imagePluginDir is where the Dockerfile puts the CNI plugins: the
// destination of the COPY that brings portmap into the final stage.
func imagePluginDir(t *testing.T) string {
	t.Helper()
	df, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range regexp.MustCompile(`(?m)^COPY --from=build (.*) (\S+)$`).FindAllSubmatch(df, -1) {
		if bytes.Contains(line[1], []byte("/portmap")) {
			return strings.TrimSuffix(string(line[2]), "/")
		}
	}
	t.Fatal("the Dockerfile copies no portmap into the image")
	return ""
}

// TestEnv: the node's identity comes from the downward API, the gossip key
// from a Secret, seeds from the API server; and every GRAPEVINE_* variable
// the manifest sets is one the agent reads.
func TestEnv(t *testing.T) {
	m := loadManifest(t)
	agent := m.container(t, "agent", false)

	for env, field := range map[string]string{
		"GRAPEVINE_NODE_NAME": "spec.nodeName",
		"GRAPEVINE_HOST_IP":   "status.hostIP",
	} {
		e, ok := envOf(agent, env)
		if !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
			t.Errorf("%s = %+v, want the downward API's %s", env, e, field)
		}
	}
	if e, _ := envOf(agent, "GRAPEVINE_JOIN_KUBERNETES"); e.Value != "true" {
		t.Errorf("GRAPEVINE_JOIN_KUBERNETES = %q, want true", e.Value)
	}

	// The Secret is required (a missing key keeps the pod from starting rather
	// than running unencrypted) and its key "key" is the file.
	keyFile, _ := envOf(agent, "GRAPEVINE_GOSSIP_KEY_FILE")
	dir, file := filepath.Split(keyFile.Value)
	var secret *corev1.SecretVolumeSource
	for _, vm := range agent.VolumeMounts {
		if vm.MountPath+"/" == dir && vm.ReadOnly {
			secret = m.volume(t, vm.Name).Secret
		}
	}
	switch {
	case secret == nil:
		t.Errorf("GRAPEVINE_GOSSIP_KEY_FILE = %q is not in a Secret mounted read-only", keyFile.Value)
	case secret.SecretName != "grapevine-gossip-key" || file != "key" || len(secret.Items) != 0:
		t.Errorf("gossip key from Secret %s file %s (items %v), want key \"key\" of grapevine-gossip-key as the docs create it",
			secret.SecretName, file, secret.Items)
	case secret.Optional != nil && *secret.Optional:
		t.Error("the gossip key Secret is optional: without it agents would gossip unencrypted")
	}

	if len(agent.EnvFrom) != 1 || agent.EnvFrom[0].ConfigMapRef == nil || agent.EnvFrom[0].ConfigMapRef.Name != m.config.Name {
		t.Errorf("agent's envFrom = %+v, want the ConfigMap %s", agent.EnvFrom, m.config.Name)
	}
	known := agentEnvVars(t)
	var set []string
	for k := range m.config.Data {
		set = append(set, k)
	}
	for _, e := range agent.Env {
		set = append(set, e.Name)
	}
	for _, name := range set {
		if !known[name] {
			t.Errorf("the manifest sets %s, which no flag of `grapevine agent` reads", name)
		}
	}

	pool, err := netip.ParsePrefix(m.config.Data["GRAPEVINE_POOL"])
	if err != nil || pool.String() != "10.244.0.0/16" {
		t.Errorf("GRAPEVINE_POOL = %q, want 10.244.0.0/16 (kubeadm init --pod-network-cidr in the docs)", m.config.Data["GRAPEVINE_POOL"])
	}
}

// TestProbesAndPorts: the probes and ports are the fixed numbers of
// docs/design.md, and the agent's defaults in cmd/grapevine are the same.
func TestProbesAndPorts(t *testing.T) {
	m := loadManifest(t)
	agent := m.container(t, "agent", false)
	consts := agentSpec(t).Consts

	metrics, err := netip.ParseAddrPort(consts["DefaultMetricsAddr"])
	if err != nil {
		t.Fatalf("cmd/grapevine DefaultMetricsAddr: %v", err)
	}
	if metrics.String() != "127.0.0.1:9962" {
		t.Errorf("the agent's default metrics address is %s, design.md fixes 127.0.0.1:9962", metrics)
	}
	if e, _ := envOf(agent, "GRAPEVINE_METRICS_ADDR"); e.Value != metrics.String() {
		t.Errorf("GRAPEVINE_METRICS_ADDR = %q, want %s", e.Value, metrics)
	}
	for path, p := range map[string]*corev1.Probe{"/healthz": agent.LivenessProbe, "/readyz": agent.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("no httpGet probe for %s", path)
			continue
		}
		g := p.HTTPGet
		if g.Host != metrics.Addr().String() || g.Port.IntValue() != int(metrics.Port()) || g.Path != path {
			t.Errorf("probe = http://%s:%s%s, want http://%s%s", g.Host, g.Port.String(), g.Path, metrics, path)
		}
	}

	port, ledgerPort := mesh.DefaultPort, mesh.DefaultLedgerPort
	if port != 7962 || ledgerPort != 7963 {
		t.Errorf("the agent's default gossip and ledger ports are %d and %d, design.md fixes 7962 and 7963", port, ledgerPort)
	}
	protocols := map[corev1.Protocol]bool{}
	ledgerTCP := false
	for _, p := range agent.Ports {
		switch int(p.ContainerPort) {
		case port:
			protocols[p.Protocol] = true
		case ledgerPort:
			ledgerTCP = ledgerTCP || p.Protocol == corev1.ProtocolTCP
		default:
			t.Errorf("agent declares port %d/%s, neither the gossip port %d nor the ledger port %d", p.ContainerPort, p.Protocol, port, ledgerPort)
		}
	}
	if !protocols[corev1.ProtocolTCP] || !protocols[corev1.ProtocolUDP] {
		t.Errorf("agent declares the gossip port for %v, want TCP and UDP (memberlist uses both)", protocols)
	}
	if !ledgerTCP {
		t.Errorf("agent does not declare the ledger port %d/TCP", ledgerPort)
	}
}

// TestPolicyContainer: NetworkPolicy is on, enforced by grapevine-policy in
// a container of its own that runs the image's grapevine-policy, with
// NET_ADMIN alone, on the node's name, serving the socket the agent names
// (one ConfigMap entry for both) in the run directory both mount from the
// same host path; every variable it is given is one of its flags, and its
// probe is its metrics address.
func TestPolicyContainer(t *testing.T) {
	m := loadManifest(t)
	agent := m.container(t, "agent", false)
	policy := m.container(t, "policy", false)
	spec, err := agentcli.ParseApp(policyDir)
	if err != nil {
		t.Fatal(err)
	}

	df, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	if len(policy.Command) != 1 || !regexp.MustCompile(`(?m)^COPY --from=build /out/grapevine-policy `+regexp.QuoteMeta(policy.Command[0])+`$`).Match(df) {
		t.Errorf("policy runs %q, which the Dockerfile does not put there", policy.Command)
	}
	if len(policy.Args) != 0 {
		t.Errorf("policy has arguments %q; its settings come from the environment", policy.Args)
	}

	socket := m.config.Data["GRAPEVINE_POLICY_SOCKET"]
	if !filepath.IsAbs(socket) {
		t.Fatalf("GRAPEVINE_POLICY_SOCKET = %q: network policy must be on in the manifest, on an absolute path", socket)
	}
	if len(policy.EnvFrom) != 1 || policy.EnvFrom[0].ConfigMapRef == nil || policy.EnvFrom[0].ConfigMapRef.Name != m.config.Name {
		t.Errorf("policy's envFrom = %+v, want the ConfigMap %s (whose GRAPEVINE_POLICY_SOCKET the agent reads too)", policy.EnvFrom, m.config.Name)
	}
	runDir, _ := envOf(policy, "GRAPEVINE_RUN_DIR")
	if filepath.Dir(socket) != runDir.Value {
		t.Errorf("the policy socket %s is not in grapevine-policy's run directory %q", socket, runDir.Value)
	}
	if a, p := m.hostPathMount(t, agent, runDir.Value), m.hostPathMount(t, policy, runDir.Value); a != p {
		t.Errorf("the agent's %s is the host's %s, grapevine-policy's is %s; they share node.json and the socket", runDir.Value, a, p)
	}
	if e, ok := envOf(policy, "GRAPEVINE_NODE_NAME"); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("policy's GRAPEVINE_NODE_NAME = %+v, want the downward API's spec.nodeName", e)
	}
	known := map[string]bool{}
	for flag := range spec.Commands[""] {
		known[agentcli.EnvVar(flag)] = true
	}
	if !known["GRAPEVINE_POLICY_SOCKET"] || !agentEnvVars(t)["GRAPEVINE_POLICY_SOCKET"] {
		t.Error("GRAPEVINE_POLICY_SOCKET is not read by both grapevine-policy and the agent")
	}
	for _, e := range policy.Env {
		if !known[e.Name] {
			t.Errorf("policy sets %s, which no flag of grapevine-policy reads", e.Name)
		}
	}

	sc := policy.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("policy securityContext = %+v, want every capability dropped but NET_ADMIN", sc)
	} else if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("policy may escalate privileges or write its root filesystem")
	}

	metrics, err := netip.ParseAddrPort(spec.Consts["DefaultMetricsAddr"])
	if err != nil {
		t.Fatalf("cmd/grapevine-policy DefaultMetricsAddr: %v", err)
	}
	if e, _ := envOf(policy, "GRAPEVINE_METRICS_ADDR"); e.Value != metrics.String() {
		t.Errorf("policy's GRAPEVINE_METRICS_ADDR = %q, want its default %s", e.Value, metrics)
	}
	if p := policy.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Host != metrics.Addr().String() ||
		p.HTTPGet.Port.IntValue() != int(metrics.Port()) || p.HTTPGet.Path != "/healthz" {
		t.Errorf("policy's liveness probe = %+v, want http://%s/healthz", p, metrics)
	}
}

// TestImage: every container runs the one image, and the image holds exactly
// the binaries of cmd/ plus the reference plugins at the Makefile's version.
func TestImage(t *testing.T) {
	m := loadManifest(t)
	spec := m.daemonSet.Spec.Template.Spec
	image := spec.Containers[0].Image
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		if c.Image != image {
			t.Errorf("container %s runs %s, want the one image %s", c.Name, c.Image, image)
		}
	}

	df, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^RUN CGO_ENABLED=0 go build .*-o /out/ \./cmd/\.\.\.$`).Match(df) {
		t.Error("Dockerfile does not build ./cmd/... statically into /out/")
	}
	var copied []string
	for _, line := range regexp.MustCompile(`(?m)^COPY --from=build (.*) \S+$`).FindAllSubmatch(df, -1) {
		for _, src := range strings.Fields(string(line[1])) {
			if dir, bin := filepath.Split(src); dir == "/out/" {
				copied = append(copied, bin)
			}
		}
	}
	slices.Sort(copied)
	entries, err := os.ReadDir(cmdDir)
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	for _, e := range entries {
		if e.IsDir() {
			commands = append(commands, e.Name())
		}
	}
	if !slices.Equal(copied, commands) {
		t.Errorf("the image gets %v from the build, cmd/ has %v", copied, commands)
	}

	mk, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^CNI_PLUGINS_VERSION\s*:=\s*(\S+)$`).FindSubmatch(mk)
	got := regexp.MustCompile(`(?m)^ARG CNI_PLUGINS_VERSION=(\S+)$`).FindSubmatch(df)
	if want == nil || got == nil || !bytes.Equal(want[1], got[1]) {
		t.Errorf("Dockerfile builds the reference plugins at %q, the Makefile pins %q", got, want)
	}
	for _, plugin := range []string{"plugins/meta/portmap@", "plugins/main/loopback@"} {
		if !bytes.Contains(df, []byte(plugin)) {
			t.Errorf("Dockerfile does not build %s", plugin)
		}
	}
}

// agentSpec reads cmd/grapevine's commands, flags and constants.
func agentSpec(t *testing.T) agentcli.Spec {
	t.Helper()
	spec, err := agentcli.Parse(agentDir)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// agentEnvVars returns the environment variables the agent's flags read.
func agentEnvVars(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	for flag := range agentSpec(t).Commands["agent"] {
		vars[agentcli.EnvVar(flag)] = true
	}
	return vars
}

// TestSystemdUnit: the bare-metal unit grants the same capabilities as the
// DaemonSet, and the directories it makes writable under ProtectSystem=strict
// are the agent's defaults, or the agent would fail on its first write.
func TestSystemdUnit(t *testing.T) {
	m := loadManifest(t)
	raw, err := os.ReadFile("../systemd/grapevine.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{}
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			unit[k] = append(unit[k], v)
		}
	}
	one := func(key string) string {
		if len(unit[key]) != 1 {
			t.Errorf("unit sets %s %d times, want once", key, len(unit[key]))
			return ""
		}
		return unit[key][0]
	}

	var want []string
	for _, c := range m.container(t, "agent", false).SecurityContext.Capabilities.Add {
		want = append(want, "CAP_"+string(c))
	}
	got := strings.Fields(one("CapabilityBoundingSet"))
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("unit's CapabilityBoundingSet = %v, the DaemonSet grants %v", got, want)
	}

	// systemd creates StateDirectory= under /var/lib and RuntimeDirectory=
	// under /run.
	if dir := "/var/lib/" + one("StateDirectory"); dir != nodestate.DefaultStateDir {
		t.Errorf("unit's StateDirectory is %s, the agent's default state dir %s", dir, nodestate.DefaultStateDir)
	}
	if dir := "/run/" + one("RuntimeDirectory"); dir != nodestate.DefaultRunDir {
		t.Errorf("unit's RuntimeDirectory is %s, the agent's default run dir %s", dir, nodestate.DefaultRunDir)
	}
	if rw := one("ReadWritePaths"); strings.TrimPrefix(rw, "-") != node.DefaultCNIConfDir {
		t.Errorf("unit's ReadWritePaths=%s, the agent writes the conflist to %s", rw, node.DefaultCNIConfDir)
	}
	if one("ProtectSystem") != "strict" {
		t.Errorf("ProtectSystem=%s; the test above assumes strict", one("ProtectSystem"))
	}
	if one("RuntimeDirectoryPreserve") != "yes" {
		t.Error("the run directory is removed when the agent stops; the CNI plugins need node.json meanwhile")
	}
	if one("Restart") != "always" || one("EnvironmentFile") != "-/etc/default/grapevine" ||
		one("ExecStart") != "/usr/local/bin/grapevine agent" {
		t.Errorf("unit: Restart=%s EnvironmentFile=%s ExecStart=%s, want always, -/etc/default/grapevine, /usr/local/bin/grapevine agent",
			one("Restart"), one("EnvironmentFile"), one("ExecStart"))
	}
}
