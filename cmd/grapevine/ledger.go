package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// ledgerCommand groups the operator's commands on the block ledger.
func ledgerCommand() *cli.Command {
	return &cli.Command{
		Name:        "ledger",
		Usage:       "operate on this node's replica of the block ledger",
		Subcommands: []*cli.Command{ledgerRecoverCommand(), ledgerResetCommand()},
	}
}

// ledgerRecoverCommand wraps mesh.RecoverLedger for the operator.
func ledgerRecoverCommand() *cli.Command {
	return &cli.Command{
		Name: "recover",
		Usage: "with the agent stopped: make this node the only voter of a ledger that lost a majority of its voters for good; " +
			"start its agent afterwards, then the others",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: nodestate.DefaultStateDir, EnvVars: envVar("state-dir"), Usage: "the agent's --state-dir"},
			&cli.StringFlag{Name: "host-ip", Required: true, EnvVars: envVar("host-ip"), Usage: "the agent's host IP, where its ledger listens"},
			&cli.IntFlag{Name: "ledger-port", Value: mesh.DefaultLedgerPort, EnvVars: envVar("ledger-port"), Usage: "the agent's --ledger-port"},
		},
		Action: func(c *cli.Context) error {
			ip, err := netip.ParseAddr(c.String("host-ip"))
			if err != nil || !ip.Is4() {
				return fmt.Errorf("--host-ip %q is not an IPv4 address", c.String("host-ip"))
			}
			port := c.Int("ledger-port")
			if port <= 0 || port > 65535 {
				return fmt.Errorf("--ledger-port %d out of range", port)
			}
			addr := netip.AddrPortFrom(ip, uint16(port))
			if err := mesh.RecoverLedger(c.String("state-dir"), addr); err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.App.Writer, "ledger recovered: this node (%s) is its only voter; start its agent, then the others\n", addr)
			return err
		},
	}
}

// ledgerResetCommand wraps mesh.ResetLedger for the operator: the way back
// for a node whose status says its ledger state belongs to another ledger
// than its peers'.
func ledgerResetCommand() *cli.Command {
	return &cli.Command{
		Name: "reset",
		Usage: "with the agent stopped: set this node's ledger state aside (the node ID stays), so that, started again, " +
			"it joins the ledger its peers hold; for a node whose status says its state belongs to another ledger",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: nodestate.DefaultStateDir, EnvVars: envVar("state-dir"), Usage: "the agent's --state-dir"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			dir := c.String("state-dir")
			if !filepath.IsAbs(dir) {
				return fmt.Errorf("--state-dir %q must be an absolute path", dir)
			}
			to, err := mesh.ResetLedger(dir, time.Now())
			if err != nil {
				return err
			}
			if to == "" {
				_, err = fmt.Fprintf(c.App.Writer, "no ledger state in %s; start the agent to join its peers' ledger\n", dir)
				return err
			}
			_, err = fmt.Fprintf(c.App.Writer, "ledger state moved to %s; start the agent to join its peers' ledger (delete that directory once it has)\n", to)
			return err
		},
	}
}
