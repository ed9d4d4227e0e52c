package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// demoPort is where the demo's echo server listens in the first pod of h2.
const demoPort = 7000

// demoPool6 is the IPv6 pool of a dual-stack demo (up --dual-stack).
const demoPool6 = "fd00:10:244::/48"

func up(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	hosts := fs.Int("hosts", 3, "how many hosts")
	pods := fs.Int("pods", 2, "pods per host")
	binDir := fs.String("bin-dir", envOr("GRAPEVINE_BIN_DIR", "bin"), "directory holding the grapevine binary")
	cniPath := fs.String("cni-path", envOr("GRAPEVINE_CNI_PATH", "bin/cni"), "directories holding the CNI plugins, colon separated")
	dualStack := fs.Bool("dual-stack", false, "give the hosts and the outside host IPv6 addresses and the pods IPv6 ones from --pool6 "+demoPool6)
	fs.Parse(args)
	if os.Geteuid() != 0 {
		return fmt.Errorf("the lab creates network namespaces: run as root")
	}
	if *hosts < 2 || *pods < 1 {
		return fmt.Errorf("need at least 2 hosts and 1 pod per host")
	}
	bin, err := filepath.Abs(*binDir)
	if err != nil {
		return err
	}
	var cni []string
	for _, d := range filepath.SplitList(*cniPath) {
		abs, err := filepath.Abs(d)
		if err != nil {
			return err
		}
		cni = append(cni, abs)
	}
	if _, err := os.Stat(filepath.Join(bin, "grapevine")); err != nil {
		return fmt.Errorf("no agent binary (run `make build cni-plugins` first): %w", err)
	}
	recs, err := lab.Records()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.OwnerPID == 0 {
			// Not a failure: the demo the user asked for is there. Say so
			// and exit 0, so make adds no "Error 1" to the message.
			fmt.Printf("lab %s%s is already up (state in %s); explore it, or remove it first with `make demo-down`\n",
				lab.NamePrefix, r.ID, r.Dir)
			return nil
		}
	}

	began := time.Now()
	id := lab.NewID()
	dir := filepath.Join(lab.RegistryDir, id)
	l, err := lab.New(ctx, lab.Config{
		ID: id, Hosts: *hosts, Dir: dir, BinDir: bin, CNIPath: cni, Detach: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	if err := show(ctx, l, *pods, *dualStack, began); err != nil {
		for _, h := range l.Hosts() {
			fmt.Fprintf(os.Stderr, "--- agent log of %s (%s):\n%s\n", h.Name, h.LogPath(), h.LogTail(20))
		}
		fmt.Fprintf(os.Stderr, "removing the lab\n")
		l.Close(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

// show starts the agents, adds pods, and shows the cluster at work; with
// dualStack over IPv6 too.
func show(ctx context.Context, l *lab.Lab, podsPerHost int, dualStack bool, began time.Time) (err error) {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	labBin := filepath.Join(l.Dir, "lab")
	if err := copyFile(labBin, self); err != nil {
		return fmt.Errorf("copy the lab binary: %w", err)
	}
	// A bound for a hung step, not a goal: on a loaded 2-core machine the
	// demo has taken two minutes. A command killed at the bound fails with
	// only "signal: killed", so the error names the bound.
	const bound = 5 * time.Minute
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (the demo did not finish within %v)", err, bound)
		}
	}()

	hosts := l.Hosts()
	fmt.Printf("lab %s%s: %d hosts on 172.16.254.0/24 (em1), outside at %s; state in %s\n\n", lab.NamePrefix, l.ID, len(hosts), l.OutsideIP(), l.Dir)
	var outside6 netip.Addr
	if dualStack {
		if outside6, err = l.AddOutsideIP6(ctx); err != nil {
			return err
		}
		for _, h := range hosts {
			if _, err := h.AddIP6(ctx); err != nil {
				return err
			}
			h.ExtraArgs = append(h.ExtraArgs, "--pool6", demoPool6)
		}
		fmt.Printf("dual-stack: the hosts also on fd00:172:16:254::/64, outside at %s; pods get IPv6 addresses from %s\n\n", outside6, demoPool6)
	}
	if err := l.StartAgents(ctx); err != nil {
		return err
	}
	if _, err := lab.WaitMesh(ctx, hosts); err != nil {
		return err
	}
	fmt.Printf("all %d agents ready with a full route mesh after %v\n\n", len(hosts), time.Since(began).Round(time.Millisecond))

	pods := make(map[*lab.Host][]*lab.Pod)
	for _, h := range hosts {
		for range podsPerHost {
			p, err := h.AddPod(ctx)
			if err != nil {
				return err
			}
			pods[h] = append(pods[h], p)
		}
	}

	h1, h2 := hosts[0], hosts[1]
	status, err := h1.StatusText(ctx, "table")
	if err != nil {
		return err
	}
	fmt.Printf("$ grapevine status   # on %s\n%s\n", h1.Name, status)
	for _, h := range hosts {
		out, err := h.Run(ctx, "ip", "route")
		if err != nil {
			return err
		}
		fmt.Printf("$ ip route   # on %s\n%s\n", h.Name, out)
	}
	for _, h := range hosts {
		for _, p := range pods[h] {
			if p.IP6.IsValid() {
				fmt.Printf("pod %s on %s: %s and %s\n", p.Namespace.Name, h.Name, p.IP, p.IP6)
				continue
			}
			fmt.Printf("pod %s on %s: %s\n", p.Namespace.Name, h.Name, p.IP)
		}
	}
	fmt.Println()
	if dualStack {
		out, err := h1.Run(ctx, "ip", "-6", "route")
		if err != nil {
			return err
		}
		fmt.Printf("$ ip -6 route   # on %s\n%s\n", h1.Name, out)
	}

	from, to := pods[h1][0], pods[h2][0]
	dsts := []netip.Addr{to.IP}
	if dualStack {
		dsts = append(dsts, to.IP6)
	}
	for _, dst := range dsts {
		fmt.Printf("$ ping %s   # from %s to %s on %s\n", dst, from.Namespace.Name, to.Namespace.Name, h2.Name)
		for i := 1; i <= 3; i++ {
			attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
			rtt, err := from.Ping(attempt, dst)
			cancel()
			if err != nil {
				return err
			}
			fmt.Printf("reply from %s: seq=%d time=%v\n", dst, i, rtt.Round(time.Microsecond))
		}
		fmt.Println()
	}

	target := netip.AddrPortFrom(to.IP, demoPort)
	if err := echoExchange(ctx, labBin, from, to.Namespace, target, "pod to pod across hosts: no NAT"); err != nil {
		return err
	}
	outside := netip.AddrPortFrom(l.OutsideIP(), demoPort)
	if err := echoExchange(ctx, labBin, from, l.Outside, outside, "pod to outside: masqueraded to the node's address"); err != nil {
		return err
	}
	if dualStack {
		if err := echoExchange(ctx, labBin, from, l.Outside, netip.AddrPortFrom(outside6, demoPort), "pod to outside over IPv6: masqueraded to the node's IPv6 address"); err != nil {
			return err
		}
	}

	ipv6Lines := ""
	if dualStack {
		ipv6Lines = fmt.Sprintf("Over IPv6:\n  ip netns exec %s %s ping %s\n  ip -n %s -6 route\n", from.Namespace.Name, labBin, to.IP6, h1.Namespace.Name)
	}
	fmt.Printf(`The lab stays up. Explore it (its name, %[12]s, is random: copy these lines):
  ip netns exec %[1]s bash       # a shell on host %[2]s
  ip netns exec %[3]s bash    # a shell in pod %[4]s (%[5]s)
  ip -n %[1]s route; ip -n %[1]s neigh
  %[6]s status --run-dir %[7]s
  ip netns exec %[3]s %[8]s ping %[9]s
  ip netns exec %[3]s %[8]s echo --to %[10]s
  tail -f %[11]s
%[13]sRemove it with: make demo-down   (or: go run ./e2e/cmd/lab down)
`, h1.Namespace.Name, h1.Name, from.Namespace.Name, from.Name, from.IP,
		filepath.Join(l.BinDir, "grapevine"), h1.RunDir(), labBin, to.IP, target, h1.LogPath(), lab.NamePrefix+l.ID, ipv6Lines)
	fmt.Printf("(up in %v)\n", time.Since(began).Round(time.Millisecond))
	return nil
}

// echoExchange starts an echo server in server (it stays up for the user to
// try; lab down ends it with the namespace) and runs the lab's echo client
// in the client pod against it, showing its output.
func echoExchange(ctx context.Context, labBin string, client *lab.Pod, server lab.Namespace, target netip.AddrPort, what string) error {
	listen := fmt.Sprintf(":%d", target.Port())
	if target.Addr().Is6() {
		listen = fmt.Sprintf("[::]:%d", target.Port())
	}
	srv := server.Command(context.WithoutCancel(ctx), labBin, "echo-server", "--listen", listen)
	srv.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("echo server in %s: %w", server.Name, err)
	}
	srv.Process.Release()
	conn, err := client.DialEcho(ctx, target) // waits until the server listens
	if err != nil {
		return err
	}
	conn.Close()
	fmt.Printf("$ lab echo --to %s   # TCP from %s, %s\n", target, client.Namespace.Name, what)
	out, err := client.Run(ctx, labBin, "echo", "--to", target.String(), "--msg", "hello from "+client.Namespace.Name)
	fmt.Println(string(out))
	return err
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
