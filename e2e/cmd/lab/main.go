// Command lab brings up a grapevine cluster in network namespaces on this
// machine for a user to explore (`make demo`), and takes it down again
// (`make demo-down`). It also carries the tiny tools the lab's pods use, so
// nothing beyond iproute2 needs to be installed: an ICMP ping and a TCP echo
// server and client, run inside a pod with `ip netns exec`.
//
//	lab up [--hosts 3] [--pods 2]    build the lab, start the agents, show it working
//	lab down [--id ID]               remove the lab (all detached labs without --id), wait for its processes to exit
//	lab ping ADDR [-c N]             ICMP echo from the current namespace
//	lab echo-server [--listen :7000] TCP echo server (greets with the client's address)
//	lab echo --to ADDR:PORT [--msg]  one exchange with an echo server
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

const usage = `usage:
  lab up [--hosts N] [--pods N] [--bin-dir DIR] [--cni-path DIRS]
  lab down [--id ID]
  lab ping ADDR [-c COUNT]
  lab echo-server [--listen ADDR]
  lab echo --to ADDR:PORT [--msg TEXT]
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func(context.Context, []string) error{
		"up":          up,
		"down":        down,
		"ping":        ping,
		"echo-server": echoServer,
		"echo":        echo,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := cmd(ctx, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "lab %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func down(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	id := fs.String("id", "", "run id of the lab to remove (default: every detached lab, and labs whose owner died)")
	fs.Parse(args)
	recs, err := lab.Records()
	if err != nil {
		return err
	}
	var errs []error
	removed := 0
	for _, r := range recs {
		if *id != "" && r.ID != *id {
			continue
		}
		// Without --id, leave labs alone whose test process is still running.
		if *id == "" && r.OwnerPID != 0 && !r.Orphaned() {
			continue
		}
		fmt.Printf("removing lab %s%s (%s)\n", lab.NamePrefix, r.ID, r.Dir)
		errs = append(errs, r.Remove(ctx))
		removed++
	}
	if *id != "" && removed == 0 {
		// No record, but namespaces may be left by a lab that died early.
		errs = append(errs, lab.Down(ctx, *id))
	}
	if removed == 0 {
		fmt.Println("no lab to remove")
	}
	errs = append(errs, lab.RemoveRegistryIfEmpty())
	return errors.Join(errs...)
}

func ping(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ping", flag.ExitOnError)
	count := fs.Int("c", 3, "how many answers to wait for")
	addr, rest := firstArg(args)
	fs.Parse(rest)
	dst, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("usage: lab ping ADDR [-c COUNT]: %w", err)
	}
	for i := 1; i <= *count; i++ {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		rtt, err := lab.Ping(attempt, dst)
		cancel()
		if err != nil {
			return err
		}
		fmt.Printf("reply from %s: seq=%d time=%v\n", dst, i, rtt.Round(time.Microsecond))
		if i < *count {
			time.Sleep(time.Second)
		}
	}
	return nil
}

func echoServer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ExitOnError)
	listen := fs.String("listen", ":7000", "address to listen on")
	fs.Parse(args)
	ln, err := net.Listen(lab.TCPNetwork(*listen), *listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	return lab.ServeEcho(ln)
}

func echo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	to := fs.String("to", "", "ADDR:PORT of an echo server")
	msg := fs.String("msg", "hello", "the line to send")
	fs.Parse(args)
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, lab.TCPNetwork(*to), *to)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	e, err := lab.NewEchoConn(c)
	if err != nil {
		return err
	}
	if err := e.RoundTrip(*msg); err != nil {
		return err
	}
	fmt.Printf("%s -> %s: sent %q, got it back; the server saw us as %s\n", c.LocalAddr(), c.RemoteAddr(), *msg, e.Source.Addr())
	return nil
}

// firstArg splits a leading positional argument from the flags after it.
func firstArg(args []string) (string, []string) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", args
	}
	return args[0], args[1:]
}

// copyFile copies the lab binary next to the lab, so the printed commands
// keep working after `go run` removes its temporary build.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
