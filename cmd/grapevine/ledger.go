package main

import (
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// ledgerCommand groups the operator's commands on the block ledger.
func ledgerCommand() *cli.Command {
	return &cli.Command{
		Name:        "ledger",
		Usage:       "operate on this node's replica of the block ledger",
		Subcommands: []*cli.Command{ledgerRecoverCommand()},
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
