// Command grapevine is the Grapevine node agent and its operator CLI.
//
//	grapevine agent      join the gossip mesh, hold a block, route every peer's block
//	grapevine status     what the local agent knows: this node and every member
//	grapevine doctor     what is wrong on this host and on its paths to the peers (reads only)
//	grapevine release    free a dead node's block cluster-wide
//	grapevine ledger recover  make this node the only voter of a new ledger when the old one lost its majority for good
//	grapevine ledger reset    set aside the state of a node that belongs to another ledger than its peers
//	grapevine keygen     print a new gossip encryption key
//	grapevine version    print the version
//
// The agent only wires packages together: mesh (with its ledger) decides who
// holds which block, node programs the kernel, and the hand-off files tell
// the CNI plugin.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/internal/daemonflag"
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
	if err := newApp(runAgent).RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "grapevine:", err)
		os.Exit(1)
	}
}

// agentRunner runs the agent with validated options until ctx ends; tests of
// the command line pass one that starts nothing.
type agentRunner func(ctx context.Context, o agentOptions, log *slog.Logger) error

// newApp builds the command line. Every error it returns is one sentence for
// the operator; main prints it once, after "grapevine:".
func newApp(run agentRunner) *cli.App {
	return &cli.App{
		Name:    "grapevine",
		Usage:   "a routed L3 pod network with gossip instead of BGP and etcd",
		Version: version,
		Commands: []*cli.Command{
			agentCommand(run),
			statusCommand(),
			doctorCommand(),
			releaseCommand(),
			ledgerCommand(),
			keygenCommand(),
			versionCommand(),
			installCNICommand(),
		},
		// Without an action of its own the app answers an unknown command
		// with "No help topic for ..." and exit status 3.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				var names []string
				for _, cmd := range c.App.VisibleCommands() {
					if cmd.Name != "help" {
						names = append(names, cmd.Name)
					}
				}
				return fmt.Errorf("unknown command %q; the commands are %s (grapevine help)", c.Args().First(), strings.Join(names, ", "))
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError:         usageError,
		EnableBashCompletion: false,
	}
}

// usageError replaces the usage dump that follows a bad flag with one line
// that says where to read about the flags.
func usageError(c *cli.Context, err error, isSubcommand bool) error {
	where := "grapevine --help"
	if isSubcommand && c.Command != nil && c.Command.Name != "" {
		where = "grapevine " + c.Command.Name + " --help"
	}
	return fmt.Errorf("%w (see %s)", err, where)
}

// noArgs refuses positional arguments for a command that takes none, so a
// mistyped flag (a missing "--", a stray value) is not silently ignored.
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments, got %q (flags start with --; see grapevine %s --help)",
			c.Command.Name, strings.Join(c.Args().Slice(), " "), c.Command.Name)
	}
	return nil
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:         "version",
		Usage:        "print the version",
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			_, err := fmt.Fprintf(c.App.Writer, "grapevine version %s\n", c.App.Version)
			return err
		},
	}
}

// agentStateDirFlag is --state-dir of a command that works on the agent's
// state directory while the agent is stopped.
func agentStateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: nodestate.DefaultStateDir, EnvVars: daemonflag.EnvVars("state-dir"), Usage: "the agent's --state-dir"}
}

func runDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "run-dir", Value: nodestate.DefaultRunDir, EnvVars: daemonflag.EnvVars("run-dir"),
		Usage: "directory with the agent's status socket and node.json"}
}
