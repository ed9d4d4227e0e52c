package node

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// syncTunnel makes the VXLAN device match d when some peer needs it:
// creates it, recreates it if its settings drifted, fixes its address and
// brings it up. It returns the device as a Link (zero when there is none).
// Removing an unneeded device waits for removeUnusedTunnel, after the routes
// through it are gone.
func (r *Reconciler) syncTunnel(d Desired, link Link) (Link, error) {
	want, wanted := DesiredTunnel(d, link)
	if !wanted {
		return Link{}, nil
	}
	have, err := r.kernel.Tunnel()
	exists := err == nil
	if err != nil && !errors.Is(err, ErrLinkNotFound) {
		return Link{}, fmt.Errorf("%w: %w", ErrTunnelNotUsable, err)
	}
	plan, err := PlanTunnel(want, true, have, exists)
	if err != nil {
		return Link{}, err
	}
	if err := r.applyTunnelPlan(want, plan); err != nil {
		return Link{}, fmt.Errorf("%w: %w", ErrTunnelNotUsable, err)
	}
	if have, err = r.kernel.Tunnel(); err != nil {
		return Link{}, fmt.Errorf("%w: %w", ErrTunnelNotUsable, err)
	}
	return Link{Name: TunnelName, Index: have.Index, Up: have.Up}, nil
}

func (r *Reconciler) applyTunnelPlan(want Tunnel, plan TunnelPlan) error {
	if plan.Empty() {
		return nil
	}
	step := func(op string, err error) error {
		if err != nil {
			r.metrics.tunnelErrors.WithLabelValues(op).Inc()
			return err
		}
		r.metrics.tunnelOps.WithLabelValues(op).Inc()
		return nil
	}
	if plan.Delete {
		if err := step("device_delete", r.kernel.DeleteTunnel()); err != nil {
			return err
		}
		r.log.Info("VXLAN device deleted to be created anew: its settings differ", "device", TunnelName)
	}
	if plan.Create {
		if err := step("device_create", r.kernel.AddTunnel(want)); err != nil {
			return err
		}
		r.log.Info("VXLAN device created", "device", TunnelName, "vni", want.VNI, "port", want.Port,
			"local", want.Local, "mac", want.MAC.String(), "vtep", want.Addr)
	}
	for _, a := range plan.DeleteAddrs {
		if err := step("address_delete", r.kernel.DeleteTunnelAddr(a)); err != nil {
			return err
		}
	}
	for _, a := range plan.AddAddrs {
		if err := step("address_add", r.kernel.AddTunnelAddr(a)); err != nil {
			return err
		}
	}
	if plan.SetUp {
		return step("device_up", r.kernel.SetTunnelUp())
	}
	return nil
}

// syncTunnelEntries gives the device exactly the neighbour and FDB entries
// of the peers routed over it (those without an error in peerErrs).
func (r *Reconciler) syncTunnelEntries(d Desired, link, tunnel Link, peerErrs map[string]error) error {
	if tunnel.Index == 0 {
		return nil
	}
	var peers []TunnelPeer
	for _, p := range d.Peers {
		if _, bad := peerErrs[p.Peer]; !bad && ChoosePath(d.Encapsulation, p.Via, link).Path == PathVXLAN {
			peers = append(peers, tunnelPeerOf(p))
		}
	}
	peers = append(peers, tunnelPeers6(d, link, tunnel, peerErrs)...)
	neighs, fdb, err := r.kernel.TunnelEntries()
	if err != nil {
		return fmt.Errorf("list entries of %s: %w", TunnelName, err)
	}
	setN, delN, setF, delF := DiffTunnelEntries(peers, neighs, fdb)
	var errs []error
	count := func(op string, err error) {
		if err != nil {
			r.metrics.tunnelErrors.WithLabelValues(op).Inc()
			errs = append(errs, err)
			return
		}
		r.metrics.tunnelOps.WithLabelValues(op).Inc()
	}
	for _, f := range delF {
		count("fdb_delete", r.kernel.DeleteFDB(f))
	}
	for _, f := range setF {
		count("fdb_set", r.kernel.SetFDB(f))
	}
	for _, n := range setN {
		count("neighbour_set", r.kernel.SetNeighbour(n))
	}
	for _, n := range delN {
		count("neighbour_delete", r.kernel.DeleteNeighbour(n))
	}
	if n := len(setN) + len(delN) + len(setF) + len(delF); n > 0 {
		r.log.Info("VXLAN entries changed", "neighbours set", len(setN), "neighbours deleted", len(delN),
			"fdb set", len(setF), "fdb deleted", len(delF))
	}
	return errors.Join(errs...)
}

// removeUnusedTunnel deletes the device once no peer needs it.
func (r *Reconciler) removeUnusedTunnel(d Desired, link Link) error {
	if _, wanted := DesiredTunnel(d, link); wanted {
		return nil
	}
	have, err := r.kernel.Tunnel()
	switch {
	case errors.Is(err, ErrLinkNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("look up %s: %w", TunnelName, err)
	case have.Kind != "vxlan":
		return nil // not ours
	}
	if err := r.kernel.DeleteTunnel(); err != nil {
		r.metrics.tunnelErrors.WithLabelValues("device_delete").Inc()
		return err
	}
	r.metrics.tunnelOps.WithLabelValues("device_delete").Inc()
	r.log.Info("VXLAN device deleted: no peer needs it", "device", TunnelName)
	return nil
}

// tunnelErrorsForPeers replaces the generic "device not usable" error of the
// VXLAN peers by the reason the device could not be set up.
func tunnelErrorsForPeers(peerErrs map[string]error, tunnelErr error) {
	if tunnelErr == nil {
		return
	}
	for peer, err := range peerErrs {
		if errors.Is(err, ErrTunnelNotUsable) {
			peerErrs[peer] = tunnelErr
		}
	}
}

// countPeersByPath sets the gauge of programmed peers per path.
func countPeersByPath(g *prometheus.GaugeVec, res Result) {
	counts := map[Path]int{PathDirect: 0, PathVXLAN: 0}
	for peer, p := range res.Paths {
		if res.Programmed(peer) {
			counts[p.Path]++
		}
	}
	for path, n := range counts {
		g.WithLabelValues(IPv4.String(), string(path)).Set(float64(n))
	}
	counts6 := map[Path]int{PathDirect: 0, PathVXLAN: 0}
	for _, p := range res.Paths6 {
		if p.Path != PathNone {
			counts6[p.Path]++
		}
	}
	for path, n := range counts6 {
		g.WithLabelValues(IPv6.String(), string(path)).Set(float64(n))
	}
}

func newTunnelMetrics() (ops, errs *prometheus.CounterVec, peers *prometheus.GaugeVec) {
	ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "grapevine_node_vxlan_operations_total",
		Help: "Writes to the VXLAN device and its neighbour and FDB entries, by operation.",
	}, []string{"op"})
	errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "grapevine_node_vxlan_errors_total",
		Help: "Failed writes to the VXLAN device and its entries, by operation.",
	}, []string{"op"})
	peers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "grapevine_node_peers",
		Help: "Peers whose route is programmed after the last pass, by address family (ipv4, ipv6) and path (direct, vxlan).",
	}, []string{"family", "path"})
	return ops, errs, peers
}
