package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
)

// statusReport is what `grapevine status` shows; -o json prints it as is.
type statusReport struct {
	Node     string         `json:"node"`
	NodeID   string         `json:"nodeID,omitempty"`
	HostIP   string         `json:"hostIP,omitempty"`
	Block    string         `json:"block,omitempty"`
	Ready    bool           `json:"ready"`
	Reason   string         `json:"reason,omitempty"`
	Degraded string         `json:"degraded,omitempty"`
	Ledger   ledgerStatus   `json:"ledger"`
	Members  []memberStatus `json:"members"`
}

// ledgerStatus is this node's replica of the block ledger.
type ledgerStatus struct {
	ClusterID string   `json:"clusterID,omitempty"`
	Role      string   `json:"role"`
	Leader    string   `json:"leader,omitempty"`
	Voters    []string `json:"voters"`
	LastIndex uint64   `json:"lastIndex"`
	// Foreign names the members of other ledgers (founded separately with
	// the same gossip key): they are never routed.
	Foreign []string `json:"foreign,omitempty"`
}

type memberStatus struct {
	Name      string `json:"name"`
	Addr      string `json:"addr,omitempty"`
	HostIP    string `json:"hostIP,omitempty"`
	Block     string `json:"block,omitempty"`
	State     string `json:"state"`
	ClusterID string `json:"clusterID,omitempty"`
	Foreign   bool   `json:"foreign,omitempty"`
	Route     string `json:"route"`
}

// Route states shown per member.
const (
	routeProgrammed = "programmed"
	routeWithdrawn  = "withdrawn"
	routeNone       = "none"
	routePending    = "pending"
)

// buildStatus combines the mesh's view with the last reconcile's outcome.
func buildStatus(v mesh.View, res node.Result, ready bool, reason string) statusReport {
	r := statusReport{
		Node:     v.Self,
		HostIP:   addrString(v.HostIP),
		Block:    prefixString(v.Block),
		Ready:    ready,
		Reason:   reason,
		Degraded: v.Degraded,
		Ledger:   buildLedgerStatus(v),
		Members:  make([]memberStatus, 0, len(v.Members)),
	}
	if !v.ID.IsZero() {
		r.NodeID = v.ID.String()
	}
	for _, m := range v.Members {
		ms := memberStatus{
			Name:    m.Name,
			Addr:    addrString(m.Addr),
			HostIP:  addrString(m.HostIP),
			Block:   prefixString(m.Block),
			State:   m.State.String(),
			Foreign: m.Foreign,
		}
		if !m.ClusterID.IsZero() {
			ms.ClusterID = m.ClusterID.String()
		}
		switch {
		case !m.Block.IsValid():
			ms.Route = routeNone
		case !routable(m):
			ms.Route = routeWithdrawn
		default:
			ms.Route = peerRouteState(res, m.Name)
		}
		r.Members = append(r.Members, ms)
	}
	return r
}

// buildLedgerStatus is the ledger part of the status. The agent refreshes
// it on every status request: a follower's role and voters change without
// a reconcile.
func buildLedgerStatus(v mesh.View) ledgerStatus {
	l := ledgerStatus{
		Role:      orNone(v.Ledger.Role),
		Leader:    v.Ledger.Leader,
		Voters:    append([]string{}, v.Ledger.Voters...),
		LastIndex: v.Ledger.LastIndex,
	}
	if !v.Ledger.ClusterID.IsZero() {
		l.ClusterID = v.Ledger.ClusterID.String()
	}
	for _, m := range v.Members {
		if m.Foreign {
			l.Foreign = append(l.Foreign, fmt.Sprintf("%s (cluster %s)", m.Name, m.ClusterID))
		}
	}
	return l
}

// peerRouteState tells from the last reconcile whether the peer's route is in
// the kernel.
func peerRouteState(res node.Result, peer string) string {
	if err, failed := res.PeerErrors[peer]; failed {
		return "error: " + err.Error()
	}
	if res.Programmed(peer) {
		return routeProgrammed
	}
	return routePending
}

// addrString and prefixString render an unset value as "" (absent in JSON);
// the table shows it as "-".
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show this node, its block and readiness, and every member with its route",
		Flags: []cli.Flag{
			runDirFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("output")
			if format != "table" && format != "json" {
				return fmt.Errorf("-o %q: want table or json", format)
			}
			body, err := callAgent(c.Context, c.String("run-dir"), http.MethodGet, "/status")
			if err != nil {
				return err
			}
			if format == "json" {
				_, err = c.App.Writer.Write(body)
				return err
			}
			var r statusReport
			if err := json.Unmarshal(body, &r); err != nil {
				return fmt.Errorf("agent answered with unreadable status: %w", err)
			}
			return printStatus(c.App.Writer, r)
		},
	}
}

func printStatus(w io.Writer, r statusReport) error {
	ready := "ready"
	if !r.Ready {
		ready = "NOT READY: " + r.Reason
	}
	fmt.Fprintf(w, "node %s  host %s  block %s  %s\n", r.Node, orDash(r.HostIP), orDash(r.Block), ready)
	if r.Degraded != "" {
		fmt.Fprintf(w, "DEGRADED: %s\n", r.Degraded)
	}
	l := r.Ledger
	voters := strings.Join(l.Voters, ",")
	fmt.Fprintf(w, "ledger %s  role %s  leader %s  voters %s  last index %d\n", orDash(l.ClusterID), l.Role, orDash(l.Leader), orDash(voters), l.LastIndex)
	if len(l.Foreign) > 0 {
		fmt.Fprintf(w, "FOREIGN LEDGER MEMBERS (not routed): %s\n", strings.Join(l.Foreign, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tHOST IP\tBLOCK\tROUTE")
	for _, m := range r.Members {
		state := m.State
		if m.Foreign {
			state += ",foreign"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, state, orDash(m.HostIP), orDash(m.Block), m.Route)
	}
	return tw.Flush()
}

func releaseCommand() *cli.Command {
	return &cli.Command{
		Name:      "release",
		Usage:     "free a dead node's block at once, cluster-wide (the node must not be alive)",
		ArgsUsage: "NODE",
		Flags:     []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("release takes exactly one node name")
			}
			name := c.Args().First()
			body, err := callAgent(c.Context, c.String("run-dir"), http.MethodPost, "/release?node="+url.QueryEscape(name))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.App.Writer, "%s\n", strings.TrimSpace(string(body)))
			return err
		},
	}
}

// callAgent makes one HTTP request to the agent's status socket.
func callAgent(ctx context.Context, runDir, method, path string) ([]byte, error) {
	sock := filepath.Join(runDir, statusSocketName)
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://grapevine"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the agent at %s (is it running, with this --run-dir?): %w", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read agent response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent: %s", strings.TrimSpace(string(body)))
	}
	return body, nil
}
