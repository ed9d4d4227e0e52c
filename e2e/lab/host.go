package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/status"
)

// ConfListName is the conflist the agent writes into its --cni-conf-dir.
const ConfListName = "10-grapevine.conflist"

// MetricsAddr is where every agent serves /metrics, /healthz and /readyz,
// inside its host's namespace.
const MetricsAddr = "127.0.0.1:9962"

// Host is one lab host: a namespace with em1 on the LAN, its own directories
// and at most one agent process.
type Host struct {
	Namespace
	// Name is the host's node name and its switch port: "h1", "h2", ...
	Name string
	// IP is the host's address on em1; Move changes it (and LAN), so it
	// must not be read while a Move runs. MakeIPv6Only makes it the
	// host's IPv6 address.
	IP  netip.Addr
	LAN int
	Dir string
	// KeyFile is the gossip key the agent is started with; the lab's key
	// unless changed before StartAgent.
	KeyFile string
	// Join is the seed the agent joins; h1 unless changed before StartAgent.
	// h1 itself joins nobody: its agent founds the cluster's ledger, as
	// an agent started without --join does.
	Join netip.Addr
	// ExtraArgs are appended to the agent's command line, e.g.
	// --encapsulation=never; set them before StartAgent.
	ExtraArgs []string
	// ExtraEnv is added to the agent's environment (after this process's),
	// e.g. a PATH without iptables, as in the agent's image; set it before
	// StartAgent.
	ExtraEnv []string

	lab *Lab

	mu        sync.Mutex
	agent     *agentProc
	lastAgent *agentProc // the agent last stopped, for its exit status
	pods      int        // pods created so far, for naming
}

type agentProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process is reaped
	err    error         // Wait's result, valid after exited
}

func newHost(l *Lab, n, lan int) *Host {
	name := "h" + strconv.Itoa(n)
	return &Host{
		Namespace: Namespace{Name: NamePrefix + l.ID + "-" + name},
		Name:      name,
		IP:        hostIP(n, lan),
		LAN:       lan,
		Dir:       filepath.Join(l.Dir, name),
		KeyFile:   l.KeyFile,
		Join:      hostIP(1, LAN1),
		lab:       l,
	}
}

// hostIP is host n's address on a LAN: .n of its network.
func hostIP(n, lan int) netip.Addr {
	prefix := lanPrefix
	if lan == LAN2 {
		prefix = lan2Prefix
	}
	ip := prefix.Addr().As4()
	ip[3] = byte(n)
	return netip.AddrFrom4(ip)
}

// hostIP6 is host n's IPv6 address on a LAN: ::n of its IPv6 network, the
// twin of hostIP.
func hostIP6(n, lan int) netip.Addr {
	prefix := lanPrefix6
	if lan == LAN2 {
		prefix = lan2Prefix6
	}
	ip := prefix.Addr().As16()
	ip[15] = byte(n)
	return netip.AddrFrom16(ip)
}

// Move unplugs the host from its LAN and plugs it into the other one with
// the address .N there, as when a machine is moved to another rack. Its
// agent must be stopped; pods stay.
func (h *Host) Move(ctx context.Context, lan int) error {
	if h.AgentRunning() {
		return fmt.Errorf("host %s: stop the agent before moving the host", h.Name)
	}
	if lan == h.LAN || (lan != LAN1 && lan != LAN2) || !h.lab.routed {
		return fmt.Errorf("host %s: cannot move from LAN %d to LAN %d", h.Name, h.LAN, lan)
	}
	// Deleting the switch port takes em1 with it.
	if err := h.lab.switchOf(h).ip(ctx, "link", "del", h.Name); err != nil {
		return err
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(h.Name, "h"))
	h.IP, h.LAN = hostIP(n, lan), lan
	return h.lab.plugHost(ctx, h)
}

// The agent's directories on this host, its log, and the conflist it writes.

func (h *Host) StateDir() string     { return filepath.Join(h.Dir, "state") }
func (h *Host) RunDir() string       { return filepath.Join(h.Dir, "run") }
func (h *Host) ConfDir() string      { return filepath.Join(h.Dir, "net.d") }
func (h *Host) LogPath() string      { return filepath.Join(h.Dir, "agent.log") }
func (h *Host) ConfListPath() string { return filepath.Join(h.ConfDir(), ConfListName) }
func (h *Host) cniCacheDir() string  { return filepath.Join(h.Dir, "cni-cache") }

// AgentArgs is the agent's command line on this host, after the binary.
func (h *Host) AgentArgs() []string {
	args := []string{"agent",
		"--node-name", h.Name,
		"--iface", "em1",
		"--host-ip", h.IP.String(),
	}
	if h.Join.IsValid() && h.Join != h.IP {
		args = append(args, "--join", h.Join.String())
	}
	return append(append(args,
		"--state-dir", h.StateDir(),
		"--run-dir", h.RunDir(),
		"--cni-conf-dir", h.ConfDir(),
		"--gossip-key-file", h.KeyFile,
		"--metrics-addr", MetricsAddr,
	), h.ExtraArgs...)
}

// StartAgent starts the real agent inside the host's namespace, its output
// appended to LogPath. Unless the lab is detached, the agent gets SIGKILL
// when this process dies, so an interrupted test leaves no agent behind.
func (h *Host) StartAgent(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.agent != nil {
		return fmt.Errorf("host %s: agent already running (pid %d)", h.Name, h.agent.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(h.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("host %s: agent log: %w", h.Name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	fmt.Fprintf(logf, "=== lab: starting agent at %s\n", time.Now().Format(time.RFC3339Nano))

	// Not CommandContext: the agent's lifetime is managed by Stop/Kill,
	// and a detached agent must outlive ctx.
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.Namespace.Name, filepath.Join(h.lab.BinDir, "grapevine")}, h.AgentArgs()...)...)
	// The agent may run iptables-legacy (see node.ForwardKernel): its lock
	// is the lab host's, not the machine's /run/xtables.lock.
	cmd.Env = append(append(agentEnv(), "XTABLES_LOCKFILE="+filepath.Join(h.Dir, "xtables.lock")), h.ExtraEnv...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if h.lab.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// `ip netns exec` execs the agent in place, so the death signal and
		// the pid carry over to the agent itself.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("host %s: start agent: %w", h.Name, err)
	}
	p := &agentProc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	h.agent = p
	h.lab.log.Info("agent started", "host", h.Name, "pid", cmd.Process.Pid)
	return nil
}

// agentEnv is this process's environment without GRAPEVINE_* variables,
// which the agent would read as flags.
func agentEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GRAPEVINE_") {
			env = append(env, kv)
		}
	}
	return env
}

// AgentRunning reports whether this host's agent process is alive.
func (h *Host) AgentRunning() bool {
	h.mu.Lock()
	p := h.agent
	h.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// AgentPID is the pid of the host's agent, 0 when none is running.
// `ip netns exec` execs the agent in place, so this is the agent itself.
func (h *Host) AgentPID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.agent == nil {
		return 0
	}
	select {
	case <-h.agent.exited:
		return 0
	default:
		return h.agent.cmd.Process.Pid
	}
}

// StopAgent sends SIGTERM (the agent leaves the cluster gracefully) and waits
// for the agent to exit. An agent that exits with an error on SIGTERM is an
// error too.
func (h *Host) StopAgent(ctx context.Context) error {
	if err := h.signalAgent(ctx, syscall.SIGTERM); err != nil {
		return err
	}
	h.mu.Lock()
	p := h.lastAgent
	h.mu.Unlock()
	if p != nil && p.err != nil {
		return fmt.Errorf("host %s: agent exited badly on SIGTERM: %w (see %s)", h.Name, p.err, h.LogPath())
	}
	return nil
}

// KillAgent sends SIGKILL, as a crash would, and reaps the agent. No agent
// running is not an error.
func (h *Host) KillAgent() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.signalAgent(ctx, syscall.SIGKILL)
}

func (h *Host) signalAgent(ctx context.Context, sig syscall.Signal) error {
	h.mu.Lock()
	p := h.agent
	h.agent = nil
	if p != nil {
		h.lastAgent = p
	}
	h.mu.Unlock()
	if p == nil {
		return nil
	}
	// Signalling an already reaped process is harmless: its pid is held
	// until Wait returns, and exited tells us it is gone.
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("host %s: signal agent: %w", h.Name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("host %s: agent did not exit after %v: %w", h.Name, sig, ctx.Err())
	}
}

// FreezeAgent stops the agent with SIGSTOP, as a long pause, a stuck write
// or a debugger would: it neither gossips nor reconciles until ThawAgent.
// The host's kernel carries on.
func (h *Host) FreezeAgent() error { return h.sendAgent(syscall.SIGSTOP) }

// ThawAgent resumes a frozen agent with SIGCONT.
func (h *Host) ThawAgent() error { return h.sendAgent(syscall.SIGCONT) }

// sendAgent signals the running agent through its os.Process, which holds
// a pidfd: never a process that took the pid of an agent that has exited.
func (h *Host) sendAgent(sig syscall.Signal) error {
	h.mu.Lock()
	p := h.agent
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("host %s: no agent running", h.Name)
	}
	select {
	case <-p.exited:
		return fmt.Errorf("host %s: no agent running", h.Name)
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("host %s: %v to agent: %w", h.Name, sig, err)
	}
	return nil
}

// AgentExit reports whether the agent exited on its own, and how. It lets a
// test tell "agent crashed" apart from "agent not ready".
func (h *Host) AgentExit() (exited bool, err error) {
	h.mu.Lock()
	p := h.agent
	h.mu.Unlock()
	if p == nil {
		return false, nil
	}
	select {
	case <-p.exited:
		return true, p.err
	default:
		return false, nil
	}
}

// AddIP6 gives a host its IPv6 address on its LAN, fd00:172:16:254::N
// for host .N on the first LAN (fd00:172:16:253::N on the second, of a
// routed lab), nodad so that it is usable at once, and returns it; start
// the agent afterwards for it to be discovered and gossiped.
func (h *Host) AddIP6(ctx context.Context) (netip.Addr, error) {
	a := hostIP6(int(h.IP.As4()[3]), h.LAN) // both IPv6 LANs are /64s
	if err := h.ip(ctx, "-6", "addr", "add", netip.PrefixFrom(a, lanPrefix6.Bits()).String(), "dev", "em1", "nodad"); err != nil {
		return netip.Addr{}, fmt.Errorf("%s: IPv6 address: %w", h.Name, err)
	}
	return a, nil
}

// MakeIPv6Only turns a host into an IPv6-only one; call it before the
// host's agent starts. em1 gets the host's IPv6 address (AddIP6) and IPv6
// routes like its IPv4 ones: on the first LAN a default route via the
// outside host's IPv6 address (AddOutsideIP6 gives the outside host that
// address) and, in a routed lab, the second LAN via the router; on the
// second LAN a default route via the router (AddRouterIP6 gives the router
// its IPv6 addresses). em1 loses its IPv4 address and with it every IPv4
// route. The host's IP becomes the IPv6 address, and its Join, unless
// changed from the default, host 1's IPv6 address: the agent's --host-ip
// and --join, so that it gossips, runs its ledger and is routed over IPv6
// alone (with an IPv6 --pool).
func (h *Host) MakeIPv6Only(ctx context.Context) (netip.Addr, error) {
	a, err := h.AddIP6(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	routes := [][]string{{"default", "via", outsideIP6.String()}}
	switch {
	case h.LAN == LAN2:
		routes = [][]string{{"default", "via", router2IP6.String()}}
	case h.lab.routed:
		routes = append(routes, []string{lan2Prefix6.String(), "via", routerIP6.String()})
	}
	for _, r := range routes {
		if err := h.ip(ctx, append([]string{"-6", "route", "add"}, append(r, "dev", "em1")...)...); err != nil {
			return netip.Addr{}, fmt.Errorf("%s: IPv6 route %v: %w", h.Name, r, err)
		}
	}
	if err := h.ip(ctx, "-4", "addr", "flush", "dev", "em1"); err != nil {
		return netip.Addr{}, fmt.Errorf("%s: remove the IPv4 address: %w", h.Name, err)
	}
	if h.Join == hostIP(1, LAN1) {
		h.Join = hostIP6(1, LAN1)
	}
	h.IP = a
	return a, nil
}

// CutLink takes the host's switch port down, as if its cable were pulled.
func (h *Host) CutLink(ctx context.Context) error {
	return h.lab.switchOf(h).ip(ctx, "link", "set", h.Name, "down")
}

// RestoreLink brings the host's switch port back up.
func (h *Host) RestoreLink(ctx context.Context) error {
	return h.lab.switchOf(h).ip(ctx, "link", "set", h.Name, "up")
}

// Status is the lab's typed view of `grapevine status -o json`, the
// agent's status.Report: addresses and blocks parsed.
type Status struct {
	Node     string       `json:"node"`
	HostIP   netip.Addr   `json:"hostIP"`
	Block    netip.Prefix `json:"block"`
	Ready    bool         `json:"ready"`
	Reason   string       `json:"reason"`
	Degraded string       `json:"degraded"`
	// PendingReleases: deleted Nodes whose blocks wait for their leases.
	PendingReleases []string `json:"pendingReleases"`
	Ledger          Ledger   `json:"ledger"`
	// Encapsulation is the agent's --encapsulation mode.
	Encapsulation string   `json:"encapsulation"`
	Members       []Member `json:"members"`
	// NameConflicts are the names several live hosts advertise.
	NameConflicts []NameConflict `json:"nameConflicts"`
	// ForwardAccept and ForwardUnhandled are the FORWARD chains the
	// agent accepts the pool in, and those it cannot handle.
	ForwardAccept    []string `json:"forwardAccept"`
	ForwardUnhandled []string `json:"forwardUnhandled"`
	// NetworkPolicy is enforcement as grapevine-policy answered the agent.
	NetworkPolicy status.NetworkPolicy `json:"networkPolicy"`
}

// NameConflict is one name that several live hosts advertise in Status.
type NameConflict struct {
	Name  string             `json:"name"`
	Nodes []NameConflictNode `json:"nodes"`
}

// NameConflictNode is one host advertising a conflicting name.
type NameConflictNode struct {
	ID     string     `json:"id"`
	HostIP netip.Addr `json:"hostIP"`
	// Holder: the ledger assigns the name's block to this host.
	Holder bool `json:"holder"`
}

// Ledger is the agent's replica of the block ledger in Status, as the
// agent reports it.
type Ledger = status.Ledger

// Member is one peer in Status.
type Member struct {
	Name   string       `json:"name"`
	Addr   netip.Addr   `json:"addr"`
	HostIP netip.Addr   `json:"hostIP"`
	Block  netip.Prefix `json:"block"`
	State  string       `json:"state"`
	Route  string       `json:"route"`
	// Foreign marks a member of another ledger.
	Foreign bool `json:"foreign"`
	// Path is direct or vxlan, PathReason why.
	Path       string `json:"path"`
	PathReason string `json:"pathReason"`
	// KeptBy names the signals keeping the route: "gossip", "data path".
	KeptBy []string `json:"keptBy"`
	// RouteReason says, for a dead or departed member, why its route stays
	// or went: "left; kept by data path", "left; withdrawn: host not
	// answering".
	RouteReason string `json:"routeReason"`
	// DataPath is "up", "down" or "" (not probed).
	DataPath string `json:"dataPath"`
}

// Member returns the member with the given name.
func (s Status) Member(name string) (Member, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// MemberAt returns the member that is host h: its name at its address.
// Unlike Member it tells apart two hosts that advertise one name.
func (s Status) MemberAt(h *Host) (Member, bool) {
	for _, m := range s.Members {
		if m.Name == h.Name && m.HostIP == h.IP {
			return m, true
		}
	}
	return Member{}, false
}

// StatusText runs `grapevine status` with the given output format.
func (h *Host) StatusText(ctx context.Context, format string) ([]byte, error) {
	return Run(ctx, filepath.Join(h.lab.BinDir, "grapevine"), "status", "--run-dir", h.RunDir(), "-o", format)
}

// Doctor runs `grapevine doctor --json` inside the host's namespace, where
// it reads the kernel, and returns what it printed on stdout and its exit
// status; err is for a doctor that could not be run at all.
func (h *Host) Doctor(ctx context.Context) (stdout []byte, exitCode int, err error) {
	return h.doctor(ctx)
}

// DoctorAll runs `grapevine doctor --all --json` on this host: every
// live host's findings, gathered by this host's agent.
func (h *Host) DoctorAll(ctx context.Context) (stdout []byte, exitCode int, err error) {
	return h.doctor(ctx, "--all")
}

func (h *Host) doctor(ctx context.Context, args ...string) (stdout []byte, exitCode int, err error) {
	cmd := h.Command(ctx, filepath.Join(h.lab.BinDir, "grapevine"), append([]string{"doctor", "--json", "--run-dir", h.RunDir()}, args...)...)
	var out, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return []byte(out.String()), exit.ExitCode(), nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("host %s: grapevine doctor: %w: %s", h.Name, err, stderr.String())
	}
	return []byte(out.String()), 0, nil
}

// Release runs `grapevine release node` against this host's agent.
func (h *Host) Release(ctx context.Context, node string) ([]byte, error) {
	return Run(ctx, filepath.Join(h.lab.BinDir, "grapevine"), "release", "--run-dir", h.RunDir(), node)
}

// Status asks the agent for its status through the real CLI.
func (h *Host) Status(ctx context.Context) (Status, error) {
	var s Status
	out, err := h.StatusText(ctx, "json")
	if err != nil {
		return s, fmt.Errorf("host %s: %w", h.Name, err)
	}
	if err := s.UnmarshalJSON(out); err != nil {
		return s, fmt.Errorf("host %s: parse status: %w: %s", h.Name, err, out)
	}
	return s, nil
}

// UnmarshalJSON reads the agent's status document (status.Report) into
// the lab's typed view of it. A missing address or block is "" there; "-",
// as the table shows it, is read as missing too.
func (s *Status) UnmarshalJSON(data []byte) error {
	var r status.Report
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	var errs []error
	addr := func(v string) netip.Addr {
		if v == "" || v == "-" {
			return netip.Addr{}
		}
		a, err := netip.ParseAddr(v)
		errs = append(errs, err)
		return a
	}
	prefix := func(v string) netip.Prefix {
		if v == "" || v == "-" {
			return netip.Prefix{}
		}
		p, err := netip.ParsePrefix(v)
		errs = append(errs, err)
		return p
	}
	*s = Status{Node: r.Node, HostIP: addr(r.HostIP), Block: prefix(r.Block), PendingReleases: r.PendingReleases,
		Ready: r.Ready, Reason: r.Reason, Degraded: r.Degraded, Encapsulation: r.Encapsulation, Ledger: r.Ledger,
		ForwardAccept: r.ForwardAccept, ForwardUnhandled: r.ForwardUnhandled, NetworkPolicy: r.NetworkPolicy}
	for _, c := range r.NameConflicts {
		nc := NameConflict{Name: c.Name}
		for _, n := range c.Nodes {
			nc.Nodes = append(nc.Nodes, NameConflictNode{ID: n.ID, HostIP: addr(n.HostIP), Holder: n.Holder})
		}
		s.NameConflicts = append(s.NameConflicts, nc)
	}
	for _, m := range r.Members {
		s.Members = append(s.Members, Member{Name: m.Name, Addr: addr(m.Addr), HostIP: addr(m.HostIP),
			Block: prefix(m.Block), State: m.State, Route: m.Route, KeptBy: m.KeptBy, DataPath: m.DataPath,
			Path: m.Path, PathReason: m.PathReason, RouteReason: m.RouteReason, Foreign: m.Foreign})
	}
	return errors.Join(errs...)
}

// WaitStatus polls the agent's status until cond holds or ctx ends. The
// error names what was awaited and the last status seen, and says so if the
// agent exited meanwhile.
func (h *Host) WaitStatus(ctx context.Context, what string, cond func(Status) bool) (Status, error) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var last Status
	err := poll.Until(ctx, fmt.Sprintf("host %s: %s", h.Name, what), 250*time.Millisecond, func() error {
		s, err := h.Status(ctx)
		if err == nil {
			last = s
		}
		if exited, exitErr := h.AgentExit(); exited {
			stop(fmt.Errorf("the agent exited (%v)", exitErr))
		}
		switch {
		case err != nil:
			return err
		case !cond(s):
			js, _ := json.Marshal(s)
			return fmt.Errorf("status %s", js)
		}
		return nil
	})
	return last, err
}

// WaitReady waits until the host's agent is ready and holds a block.
func (h *Host) WaitReady(ctx context.Context) (Status, error) {
	return h.WaitStatus(ctx, "ready", func(s Status) bool { return s.Ready && s.Block.IsValid() })
}

// WaitMesh waits until every given host is ready, sees all the others alive
// with their block, and reports their routes programmed.
func WaitMesh(ctx context.Context, hosts []*Host) (map[string]Status, error) {
	statuses := make(map[string]Status)
	for _, h := range hosts {
		s, err := h.WaitStatus(ctx, fmt.Sprintf("a full mesh of %d hosts", len(hosts)), func(s Status) bool {
			if !s.Ready || !s.Block.IsValid() {
				return false
			}
			for _, peer := range hosts {
				if peer == h {
					continue
				}
				m, ok := s.MemberAt(peer)
				if !ok || m.State != "alive" || !m.Block.IsValid() || m.Route != "programmed" {
					return false
				}
			}
			return true
		})
		if err != nil {
			return nil, err
		}
		statuses[h.Name] = s
	}
	return statuses, nil
}

// Get fetches a path such as "/readyz" from the agent's metrics listener,
// connecting from inside the host's namespace.
func (h *Host) Get(ctx context.Context, path string) (code int, body string, err error) {
	return h.GetFrom(ctx, MetricsAddr, path)
}

// GetFrom fetches a path from the HTTP listener at addr inside the host's
// namespace (grapevine-policy's, say).
func (h *Host) GetFrom(ctx context.Context, addr, path string) (code int, body string, err error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return h.Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("host %s: GET %s: %w", h.Name, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("host %s: GET %s: %w", h.Name, path, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(data)), nil
}

// LogTail returns up to the last n lines of the agent's log.
func (h *Host) LogTail(n int) string {
	tail, err := TailFile(h.LogPath(), n)
	if err != nil {
		return fmt.Sprintf("(no agent log: %v)", err)
	}
	return tail
}

// TailFile returns the last n lines of the file at path.
func TailFile(path string, n int) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n"), nil
}
