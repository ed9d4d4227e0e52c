// Command grapevine is the Grapevine node agent and its operator CLI.
//
//	grapevine agent      join the gossip mesh, hold a block, route every peer's block
//	grapevine status     what the local agent knows: this node and every member
//	grapevine release    free a dead node's block cluster-wide
//	grapevine keygen     print a new gossip encryption key
//
// The agent only wires packages together: mesh decides who holds which block,
// node programs the kernel, and the hand-off files tell the CNI plugin.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// Defaults of the agent's own (the gossip and node defaults are their
// packages'): the manifests, the docs and the lab rely on them.
const (
	DefaultMetricsAddr = "127.0.0.1:9962"
	statusSocketName   = "grapevine.sock"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	app := &cli.App{
		Name:    "grapevine",
		Usage:   "a routed L3 pod network with gossip instead of BGP and etcd",
		Version: version,
		Commands: []*cli.Command{
			agentCommand(),
			statusCommand(),
			releaseCommand(),
			keygenCommand(),
			installCNICommand(),
		},
	}
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "grapevine:", err)
		os.Exit(1)
	}
}

// envVar names the environment variable that can set a flag.
func envVar(flag string) []string {
	name := []byte("GRAPEVINE_")
	for _, c := range []byte(flag) {
		switch {
		case c == '-':
			c = '_'
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		}
		name = append(name, c)
	}
	return []string{string(name)}
}

func runDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "run-dir", Value: nodestate.DefaultRunDir, EnvVars: envVar("run-dir"),
		Usage: "directory with the agent's status socket and node.json"}
}
