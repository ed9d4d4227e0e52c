package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

// healthOf renders the probe's health of host; nil when it is not probed.
func healthOf(health map[netip.Addr]probe.Health, host netip.Addr) *status.PathHealth {
	h, probed := health[host]
	if !probed {
		return nil
	}
	return &status.PathHealth{
		Requests: h.Requests,
		Lost:     h.Lost,
		Loss:     h.Loss,
		RTTp50ms: float64(h.RTTp50.Microseconds()) / 1000,
		RTTp99ms: float64(h.RTTp99.Microseconds()) / 1000,
	}
}

// healthColumn is the table's RTT P50/P99, LOSS: "0.08/0.31ms 0%",
// "-/- 100%" when nothing was answered, "-" for a host not probed or
// not asked yet.
func healthColumn(h *status.PathHealth) string {
	if h == nil || h.Requests == 0 {
		return "-"
	}
	rtt := "-/-"
	if h.Requests > h.Lost {
		rtt = strconv.FormatFloat(h.RTTp50ms, 'f', -1, 64) + "/" + strconv.FormatFloat(h.RTTp99ms, 'f', -1, 64) + "ms"
	}
	return fmt.Sprintf("%s %.0f%%", rtt, h.Loss*100)
}

// Signals that keep a route, as KeptBy names them.
const (
	signalGossip   = "gossip"
	signalDataPath = "data path"
)

// buildStatus combines the mesh's view, the kept routes and the data-path
// verdicts with the last reconcile's outcome; withdrawn is why members
// memberlist counts out are not routed (see withdrawals). Signal times are
// filled in when the status is read (agent.freshStatus).
func buildStatus(v mesh.View, kept map[string]keptRoute, withdrawn map[string]string, paths map[netip.Addr]probe.Verdict, res node.Result, ready bool, reason string) status.Report {
	r := status.Report{
		Node:     v.Self,
		HostIP:   addrString(v.HostIP),
		Block:    prefixString(v.Block),
		Ready:    ready,
		Reason:   reason,
		Degraded: v.Degraded,
		Ledger:   buildLedgerStatus(v),

		LeaseRenewed: v.LeaseRenewed.UTC().Round(time.Second),
		LeaseEnds:    v.LeaseEndsAt.UTC().Round(time.Second),
		Members:      make([]status.Member, 0, len(v.Members)),
	}
	if !v.ID.IsZero() {
		r.NodeID = v.ID.String()
	}
	r.NameConflicts = buildNameConflicts(v)
	for _, f := range res.Forward {
		switch {
		case f.Unhandled != "":
			r.ForwardUnhandled = append(r.ForwardUnhandled, f.String())
		case f.Accepting:
			r.ForwardAccept = append(r.ForwardAccept, f.String())
		}
	}
	if res.ForwardErr != nil {
		r.ForwardError = res.ForwardErr.Error()
	}
	for _, m := range v.Members {
		key := memberKey(m)
		ms := status.Member{
			Name:    m.Name,
			ID:      key,
			Addr:    addrString(m.Addr),
			HostIP:  addrString(m.HostIP),
			Block:   prefixString(m.Block),
			State:   m.State.String(),
			Foreign: m.Foreign,
		}
		if !m.ClusterID.IsZero() {
			ms.ClusterID = m.ClusterID.String()
		}
		ms.DataPath, ms.DataPathSeen = dataPathState(paths, m.HostIP)
		route, isKept := kept[key]
		ms.RouteReason = routeReason(m, route, isKept, withdrawn[key], nameHeldElsewhere(v, m))
		switch {
		case isKept:
			// For a route kept on the data path alone the view no
			// longer shows the block; show the one still routed.
			ms.Block = prefixString(route.Block)
			ms.Route = peerRouteState(res, key)
			if route.Gossip {
				ms.KeptBy = append(ms.KeptBy, signalGossip)
			}
			if route.DataPath {
				ms.KeptBy = append(ms.KeptBy, signalDataPath)
			}
			if p, ok := res.Paths[key]; ok {
				ms.Path, ms.PathReason = string(p.Path), p.Why
			}
		case m.Block.IsValid():
			ms.Route = status.RouteWithdrawn
		case gone(m.State) && m.Held.IsValid():
			// Dead or departed and still the block's owner in the
			// ledger: its route is withdrawn, the block not freed.
			ms.Block = prefixString(m.Held)
			ms.Route = status.RouteWithdrawn
		default:
			ms.Route = status.RouteNone
		}
		r.Members = append(r.Members, ms)
	}
	return r
}

// routeReason says why a member that memberlist counts out (dead: its agent
// stopped answering; left: it stopped gracefully) still has a route or no
// longer has one, so that an operator reads "left; kept by data path"
// during an agent restart; and why a live member is not routed: another
// host holds its name (heldBy, its host IP; "" if none), or it advertises
// another block than the ledger assigns it. withdrawn is the member's
// entry of withdrawals. A member routed on gossip needs no explanation: "".
func routeReason(m mesh.Member, route keptRoute, isKept bool, withdrawn, heldBy string) string {
	switch {
	case isKept && route.Gossip:
		return ""
	case isKept:
		return m.State.String() + "; kept by data path"
	case withdrawn != "":
		return m.State.String() + "; " + withdrawn
	case !m.State.Live() || m.Foreign:
		return ""
	case heldBy != "":
		return "not routed: name " + m.Name + " is held by the node at " + heldBy + "; the ledger refuses this one's claims"
	case m.Held.IsValid() && m.Advertised.IsValid() && m.Advertised != m.Held:
		return "not routed: advertises block " + orNone(prefixString(m.Advertised)) + ", the ledger assigns " + m.Held.String()
	}
	return ""
}

// nameHeldElsewhere is the host IP of a node that holds m's name in a
// name conflict while m holds no block under it; "" otherwise (after a
// partition both may hold one).
func nameHeldElsewhere(v mesh.View, m mesh.Member) string {
	for _, c := range v.NameConflicts {
		if c.Name != m.Name {
			continue
		}
		held := ""
		for _, n := range c.Nodes {
			switch {
			case n.ID == m.ID && n.Holder:
				return ""
			case n.Holder && held == "":
				held = n.HostIP.String()
			}
		}
		return held
	}
	return ""
}

// buildNameConflicts renders the view's name conflicts for the status.
func buildNameConflicts(v mesh.View) []status.NameConflict {
	var out []status.NameConflict
	for _, c := range v.NameConflicts {
		cs := status.NameConflict{Name: c.Name}
		for _, n := range c.Nodes {
			cs.Nodes = append(cs.Nodes, status.NameClaimant{ID: n.ID.String(), HostIP: addrString(n.HostIP), Holder: n.Holder, Self: n.Self})
		}
		out = append(out, cs)
	}
	return out
}

// buildLedgerStatus is the ledger part of the status. The agent refreshes
// it on every status request: a follower's role and voters change without
// a reconcile.
func buildLedgerStatus(v mesh.View) status.Ledger {
	l := status.Ledger{
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
		return node.PeerProgrammed
	}
	return node.PeerPending
}

// dataPathState renders the prober's verdict on host: "up", "down",
// "no reply yet" for a host probed since moments ago that has not answered
// (a fresh agent's peers are not down), or "" when the host is not probed.
func dataPathState(paths map[netip.Addr]probe.Verdict, host netip.Addr) (string, time.Time) {
	v, probed := paths[host]
	switch {
	case !probed:
		return "", time.Time{}
	case v.Up:
		return "up", v.LastReply
	case v.LastReply.IsZero():
		return "no reply yet", time.Time{}
	}
	return "down", v.LastReply
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
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
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
			var r status.Report
			if err := json.Unmarshal(body, &r); err != nil {
				return fmt.Errorf("agent answered with unreadable status: %w", err)
			}
			return printStatus(c.App.Writer, r)
		},
	}
}

func printStatus(w io.Writer, r status.Report) error {
	ready := "ready"
	if !r.Ready {
		ready = "NOT READY: " + r.Reason
	}
	fmt.Fprintf(w, "node %s  host %s  block %s  %s\n", r.Node, orDash(r.HostIP), orDash(r.Block), ready)
	if r.Block6 != "" {
		fmt.Fprintf(w, "IPv6: host %s  block6 %s\n", orDash(r.HostIP6), r.Block6)
	}
	if r.Encapsulation != "" {
		fmt.Fprintf(w, "encapsulation %s\n", r.Encapsulation)
	}
	if r.Degraded != "" {
		fmt.Fprintf(w, "DEGRADED: %s\n", r.Degraded)
	}
	if !r.LeaseEnds.IsZero() {
		fmt.Fprintf(w, "lease renewed %s  ends %s\n", r.LeaseRenewed.Format(time.RFC3339), r.LeaseEnds.Format(time.RFC3339))
	}
	for _, p := range r.PendingReleases {
		fmt.Fprintf(w, "pending release: %s\n", p)
	}
	for _, f := range r.ForwardAccept {
		fmt.Fprintf(w, "firewall: %s\n", f)
	}
	for _, f := range r.ForwardUnhandled {
		fmt.Fprintf(w, "FIREWALL NOT HANDLED: %s\n", f)
	}
	if r.ForwardError != "" {
		fmt.Fprintf(w, "FIREWALL NOT HANDLED: %s\n", r.ForwardError)
	}
	fmt.Fprintln(w, policyLine(r.NetworkPolicy, time.Now()))
	l := r.Ledger
	voters := strings.Join(l.Voters, ",")
	fmt.Fprintf(w, "ledger %s  role %s  leader %s  voters %s  last index %d\n", orDash(l.ClusterID), l.Role, orDash(l.Leader), orDash(voters), l.LastIndex)
	if len(l.Foreign) > 0 {
		fmt.Fprintf(w, "FOREIGN LEDGER MEMBERS (not routed): %s\n", strings.Join(l.Foreign, ", "))
	}
	for _, c := range r.NameConflicts {
		fmt.Fprintf(w, "NAME CONFLICT: %s is used by %s\n", c.Name, claimantsColumn(c.Nodes))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tHOST IP\tBLOCK\tROUTE\tPATH\tKEPT BY\tGOSSIP SEEN\tDATA PATH\tRTT P50/P99, LOSS (1m)\tWHY THIS PATH"+ipv6Header(r))
	now := time.Now()
	for _, m := range r.Members {
		state := m.State
		if m.Foreign {
			state += ",foreign"
		}
		dataPath := orDash(m.DataPath)
		if !m.DataPathSeen.IsZero() {
			dataPath += ", " + ago(now, m.DataPathSeen)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s\n", m.Name, state, orDash(m.HostIP), orDash(m.Block), m.Route,
			orDash(m.Path), keptByColumn(m), orDash(ago(now, m.GossipSeen)), dataPath, healthColumn(m.DataPathHealth), orDash(m.PathReason), ipv6Columns(r, m))
	}
	return tw.Flush()
}

// policyLine is the status's line on network policy: "network policy off",
// "network policy on: 3 policies, 5 pods enforced, last sync 4s ago", or
// what keeps it from being in force.
func policyLine(p status.NetworkPolicy, now time.Time) string {
	switch {
	case !p.Enabled:
		return "network policy off"
	case p.Unreachable != "":
		return "network policy on: GRAPEVINE-POLICY NOT ANSWERING, new pods cannot start: " + p.Unreachable
	case !p.Synced:
		return "network policy on: WAITING for the first lists of pods, namespaces and policies"
	}
	line := fmt.Sprintf("network policy on: %d policies, %d pods enforced, last sync %s", p.Policies, p.Pods, orDash(ago(now, p.LastSync)))
	if p.Error != "" {
		line += "\nNETWORK POLICY NOT APPLIED: " + p.Error
	}
	return line
}

// claimantsColumn lists the hosts of a name conflict: "10.0.0.3 (ID ...,
// holds the block), 10.0.0.9 (ID ..., refused by the ledger)".
func claimantsColumn(nodes []status.NameClaimant) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		what := "refused by the ledger"
		if n.Holder {
			what = "holds the block"
		}
		if n.Self {
			what += ", this node"
		}
		parts[i] = fmt.Sprintf("%s (ID %s, %s)", n.HostIP, n.ID, what)
	}
	return strings.Join(parts, ", ")
}

// keptByColumn is the table's KEPT BY: the signals keeping a live member's
// route, or for a dead or departed member why its route stays or went
// ("left; kept by data path").
func keptByColumn(m status.Member) string {
	if m.RouteReason != "" {
		return m.RouteReason
	}
	return orDash(strings.Join(m.KeptBy, "+"))
}

// ago renders how long before now t was, "" for a zero t.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return now.Sub(t).Round(100*time.Millisecond).String() + " ago"
}

func releaseCommand() *cli.Command {
	return &cli.Command{
		Name:         "release",
		Usage:        "free a dead node's block cluster-wide once its lease has ended (the node must not be alive; says how long is left)",
		ArgsUsage:    "NODE",
		Flags:        []cli.Flag{runDirFlag()},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("release takes exactly one node name, got %d arguments (grapevine release NODE)", c.NArg())
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
		// The agent answers a failure with one sentence for the operator.
		return nil, errors.New(strings.TrimSpace(string(body)))
	}
	return body, nil
}
