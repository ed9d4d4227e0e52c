package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// Namespace is a named network namespace (one `ip netns` entry).
type Namespace struct {
	Name string
}

// Path is the namespace's bind mount, as CNI_NETNS expects it.
func (n Namespace) Path() string { return filepath.Join(netnsDir, n.Name) }

func (n Namespace) create(ctx context.Context) error {
	if _, err := Run(ctx, "ip", "netns", "add", n.Name); err != nil {
		return err
	}
	return n.ip(ctx, "link", "set", "lo", "up")
}

// ip runs `ip -n <ns> args...`.
func (n Namespace) ip(ctx context.Context, args ...string) error {
	_, err := Run(ctx, "ip", append([]string{"-n", n.Name}, args...)...)
	return err
}

// Run runs a command inside the namespace (`ip netns exec`) and returns its
// combined output.
func (n Namespace) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return Run(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Command prepares a command that runs inside the namespace.
func (n Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs f on an OS thread switched into the namespace. Sockets f opens
// stay in the namespace after f returns; processes it starts inherit it.
func (n Namespace) Do(f func() error) error {
	target, err := ns.GetNS(n.Path())
	if err != nil {
		return fmt.Errorf("namespace %s: %w", n.Name, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return f() })
}

// Listen opens a TCP listener inside the namespace: IPv4 only, unless addr
// is an IPv6 one ("[::]:7000"), then IPv6 only.
func (n Namespace) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(TCPNetwork(addr), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, n.Name, err)
	}
	return ln, nil
}

// Dial opens a TCP connection from inside the namespace.
func (n Namespace) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, TCPNetwork(addr), addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, n.Name, err)
	}
	return c, nil
}

// TCPNetwork is "tcp6" for an IPv6 address and port, "tcp4" otherwise:
// a lab's sockets never mix the families.
func TCPNetwork(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		return "tcp6"
	}
	return "tcp4"
}

// Sysctl reads an IPv4 sysctl of the namespace, e.g. "conf/gv1234/proxy_arp".
func (n Namespace) Sysctl(key string) (string, error) {
	var v []byte
	err := n.Do(func() (err error) {
		v, err = os.ReadFile(filepath.Join("/proc/sys/net/ipv4", key))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("sysctl %s in %s: %w", key, n.Name, err)
	}
	return strings.TrimSpace(string(v)), nil
}

// handle opens a netlink handle bound to the namespace.
func (n Namespace) handle() (*netlink.Handle, error) {
	nsh, err := netns.GetFromPath(n.Path())
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", n.Name, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	return h, nil
}

// Routes lists the IPv4 routes of the main table.
func (n Namespace) Routes() ([]netlink.Route, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: syscall.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("routes in %s: %w", n.Name, err)
	}
	return rs, nil
}

// Neighbours lists the IPv4 neighbour entries.
func (n Namespace) Neighbours() ([]netlink.Neigh, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	neighs, err := h.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("neighbours in %s: %w", n.Name, err)
	}
	return neighs, nil
}

// Links lists the interfaces.
func (n Namespace) Links() ([]netlink.Link, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("links in %s: %w", n.Name, err)
	}
	return ls, nil
}

// LinkByIndex returns the interface with the given index.
func (n Namespace) LinkByIndex(index int) (netlink.Link, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("link %d in %s: %w", index, n.Name, err)
	}
	return l, nil
}

// killProcesses ends every process inside the namespace: SIGTERM, then
// SIGKILL for whatever is left after a grace period. It returns once the
// processes are gone from the process table, not only from the namespace: a
// process that has exited stays a zombie until its parent reaps it, and the
// agents of a detached lab have init as their parent.
func (n Namespace) killProcesses(ctx context.Context) error {
	signalled := map[int]ProcStat{}
	defer func() { waitReaped(ctx, signalled) }()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		pids, err := n.pids(ctx)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			if _, seen := signalled[pid]; !seen {
				if st, err := ReadProcStat(pid); err == nil {
					signalled[pid] = st
				}
			}
			SignalIf(pid, sig, func(pid int) bool { return InNetNS(pid, n.Path()) })
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if pids, _ := n.pids(ctx); len(pids) == 0 {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if pids, _ := n.pids(ctx); len(pids) > 0 {
		return fmt.Errorf("namespace %s: processes %v survived SIGKILL", n.Name, pids)
	}
	return nil
}

// reapWait bounds the wait for exited processes to be reaped by their parent.
const reapWait = 10 * time.Second

// waitReaped waits until none of procs is in the process table any more (its
// pid gone, or taken by a process that started later), up to reapWait.
func waitReaped(ctx context.Context, procs map[int]ProcStat) {
	deadline := time.Now().Add(reapWait)
	for pid, was := range procs {
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if now, err := ReadProcStat(pid); err != nil || now.StartTime != was.StartTime {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (n Namespace) pids(ctx context.Context) ([]int, error) {
	out, err := Run(ctx, "ip", "netns", "pids", n.Name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("ip netns pids %s: %q is not a pid", n.Name, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// run executes a command and returns its combined output; the error carries
// the command line and output, which is what one needs to act on it.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// LinkByName returns the interface with the given name.
func (n Namespace) LinkByName(name string) (netlink.Link, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s in %s: %w", name, n.Name, err)
	}
	return l, nil
}

// Addrs lists the IPv4 addresses of an interface.
func (n Namespace) Addrs(link netlink.Link) ([]netlink.Addr, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	as, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s in %s: %w", link.Attrs().Name, n.Name, err)
	}
	return as, nil
}
