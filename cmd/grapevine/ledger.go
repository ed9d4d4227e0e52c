package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/internal/daemonflag"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/status"
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
		Usage: "with the agent stopped: make this node the only voter of a new ledger holding its replica, when the old one lost a majority of its voters for good; " +
			"refused while another voter answers; start its agent afterwards, then reset the others (docs/operations.md)",
		Flags: []cli.Flag{
			agentStateDirFlag(),
			&cli.StringFlag{Name: "host-ip", Required: true, EnvVars: daemonflag.EnvVars("host-ip"), Usage: "the agent's host IP, where its ledger listens"},
			&cli.IntFlag{Name: "ledger-port", Value: mesh.DefaultLedgerPort, EnvVars: daemonflag.EnvVars("ledger-port"), Usage: "the agents' --ledger-port"},
			&cli.IntFlag{Name: "port", Value: mesh.DefaultPort, EnvVars: daemonflag.EnvVars("port"), Usage: "the agents' gossip --port, probed on every voter"},
			&cli.DurationFlag{Name: "probe-timeout", Value: mesh.DefaultProbeTimeout, Usage: "how long to wait for each voter's ports to answer"},
			runDirFlag(),
		},
		Action: func(c *cli.Context) error {
			ip, err := netip.ParseAddr(c.String("host-ip"))
			if err != nil || ip.Is4In6() || ip.Zone() != "" {
				return fmt.Errorf("--host-ip %q is not an IP address (IPv4, or IPv6 in an IPv6-only cluster)", c.String("host-ip"))
			}
			for _, flag := range []string{"ledger-port", "port"} {
				if p := c.Int(flag); p <= 0 || p > 65535 {
					return fmt.Errorf("--%s %d out of range", flag, p)
				}
			}
			if c.Duration("probe-timeout") <= 0 {
				return fmt.Errorf("--probe-timeout %s: want a positive duration", c.Duration("probe-timeout"))
			}
			if err := refuseRunningAgent(c.Context, c.String("run-dir")); err != nil {
				return err
			}
			addr := netip.AddrPortFrom(ip, uint16(c.Int("ledger-port")))
			rec, err := mesh.RecoverLedger(c.Context, c.String("state-dir"), mesh.RecoverOptions{
				LedgerAddr: addr, GossipPort: c.Int("port"), ProbeTimeout: c.Duration("probe-timeout"),
			})
			if err != nil {
				return err
			}
			return printRecovery(c.App.Writer, addr, rec)
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
			agentStateDirFlag(),
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

// refuseRunningAgent consults the local agent's status socket: if it
// answers, the agent runs (recover needs it stopped), and its gossip says
// which voters are alive.
func refuseRunningAgent(ctx context.Context, runDir string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := callAgent(ctx, runDir, http.MethodGet, "/status")
	if err != nil {
		return nil // not running here (or not with this --run-dir): the state dir's lock tells
	}
	var st status.Report
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("the agent is running here (%s answers): stop it before recovering its ledger", filepath.Join(runDir, statusSocketName))
	}
	var alive []string
	for _, m := range st.Members {
		if slices.Contains(st.Ledger.Voters, m.Name) && (m.State == "alive" || m.State == "suspect") {
			alive = append(alive, m.Name)
		}
	}
	if len(alive) > 0 {
		return fmt.Errorf("the agent is running here and its gossip counts voter %s alive: the ledger has not lost its majority; do not recover it",
			strings.Join(alive, ", voter "))
	}
	return fmt.Errorf("the agent is running here (%s answers): stop it before recovering its ledger", filepath.Join(runDir, statusSocketName))
}

// printRecovery tells the operator what the recovery did and what is left
// to do.
func printRecovery(w io.Writer, addr netip.AddrPort, rec ledger.Recovery) error {
	var b strings.Builder
	fmt.Fprintf(&b, "ledger recovered: this node (%s) is the only voter of ledger %s, recovered from ledger %s\n", addr, rec.NewClusterID, rec.ClusterID)
	for _, s := range rec.Others {
		role := "non-voter"
		if s.Voter {
			role = "dropped voter"
		}
		fmt.Fprintf(&b, "  %s: %s\n", role, s)
	}
	if len(rec.Others) > 0 {
		fmt.Fprintf(&b, "members of ledger %s are foreign to the recovered ledger: start this node's agent, then run grapevine ledger reset on each of the others and start theirs (docs/operations.md)\n", rec.ClusterID)
	} else {
		b.WriteString("start this node's agent\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
