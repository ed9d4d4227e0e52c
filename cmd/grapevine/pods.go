package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// podSettle is how long a host veth must have been seen before the agent
// repairs its pod's host side: ADD labels the veth first and routes the pod
// after, in well under this even on a loaded host, and a repair meanwhile
// would only race the plugin.
const podSettle = 3 * time.Second

// staleAfter is how old a reservation must be before the agent frees it for
// want of a host veth carrying its attachment's alias: an ADD reserves its
// address before it creates and labels the veth (and a repeated ADD
// renews the reservation before it replaces the veth), in well under this.
const staleAfter = time.Minute

// ipamStore is the IPAM store the conflist names: the plugin's reservations
// for this network.
func (a *agent) ipamStore() ipam.Config {
	return ipam.Config{Network: node.NetworkName, DataDir: nodestate.IPAMDataDir(a.opts.StateDir)}
}

// storeDir is ipamStore's directory.
func (a *agent) storeDir() string { return a.ipamStore().StoreDir() }

// tendPods puts back the pods' host sides (see node.Reconciler.ReconcilePods)
// and says why an ADD could not succeed now, "" when it could: the state
// directory refuses writes, or every address of the block is reserved. A
// pod that cannot be repaired is logged, when its reason first appears or
// changes, and does not make the node unready: other pods still can be
// added.
//
// It also frees the reservations of pods that are gone (collectStale), for
// runtimes that never send CNI GC. The store's checks (a write, a count)
// run only while the node is ready otherwise: the reason is not used else.
func (a *agent) tendPods(ctx context.Context, block netip.Prefix, ready bool) string {
	// Taken before the host veths are listed: a reservation written before
	// it whose veth that listing misses belongs to no ADD in progress.
	cutoff := time.Now().Add(-staleAfter)
	reservations, readErr := ipam.ReadReservations(a.ipamStore())
	if readErr == nil {
		spec := node.PodSpec{Network: node.NetworkName, Pool: a.opts.Pool, Pool6: a.opts.Pool6, Reservations: reservations, Settle: podSettle}
		res, err := a.rec.ReconcilePods(ctx, spec)
		a.logPodErrors(err)
		a.podRecheck = nil
		if res.Unsettled > 0 {
			a.podRecheck = time.After(podSettle)
		}
		if res.Routes+res.Neighbours+res.Sysctls > 0 {
			a.log.Info("pods' host sides put back", "pods", res.Pods, "routes", res.Routes, "neighbours", res.Neighbours, "settings", res.Sysctls)
		}
		if res.VethsListed {
			reservations = a.collectStale(reservations, res.Veths, cutoff)
		}
	} else {
		a.logPodErrors(readErr)
	}
	if !ready {
		return ""
	}
	if dir, err := checkWritable(a.storeDir()); err != nil {
		return fmt.Sprintf("pods cannot be added: %s does not take writes: %v", dir, err)
	}
	if readErr == nil {
		return exhausted(block, reservations)
	}
	return ""
}

// collectStale frees the reservations written before cutoff whose
// attachment no host veth in veths carries (its pod is gone: the runtime
// removed the namespace, and the veth with it, without a DEL reaching the
// plugin, or the reservation names no attachment at all), and returns the
// reservations left. It takes the store's lock only when the lock-free
// reading in rs shows something to free; ipam.CollectStale decides again
// under the lock.
func (a *agent) collectStale(rs []node.Reservation, veths []node.HostVeth, cutoff time.Time) []node.Reservation {
	aliases := make([]string, len(veths))
	for i, v := range veths {
		aliases[i] = v.Alias
	}
	live := hostveth.Attachments(node.NetworkName, aliases)
	if !slices.ContainsFunc(rs, func(r node.Reservation) bool { return r.Stale(cutoff, live) }) {
		return rs
	}
	freed, err := ipam.CollectStale(a.ipamStore(), cutoff, live)
	for _, r := range freed {
		a.collected.Inc()
		a.log.Warn("freed the address of a pod that is gone: no host veth carries its attachment",
			"addr", r.Addr, "container", r.ContainerID, "ifname", r.IfName, "reserved", r.Written)
	}
	// A lasting failure (a read-only disk) is logged once, not every pass.
	switch {
	case err == nil:
		a.lastCollectErr = ""
	case err.Error() != a.lastCollectErr:
		a.log.Error("cannot free the addresses of pods that are gone", "err", err)
		a.lastCollectErr = err.Error()
	}
	gone := make(map[netip.Addr]bool, len(freed))
	for _, r := range freed {
		gone[r.Addr] = true
	}
	return slices.DeleteFunc(rs, func(r node.Reservation) bool { return gone[r.Addr] })
}

// logPodErrors logs the pods' repair failures when they differ from the
// last pass's, so a lasting one is not repeated every pass.
func (a *agent) logPodErrors(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case msg == a.lastPodErr:
	case msg == "":
		a.log.Info("pods' host sides all kept again")
	default:
		a.log.Warn("pods' host sides not all kept", "err", err)
	}
	a.lastPodErr = msg
}

// exhausted says why no address of block is free: every usable address is
// reserved. "" while one is free, or without a block. It is pure.
func exhausted(block netip.Prefix, reservations []node.Reservation) string {
	if _, _, err := ipam.UsableRange(block); err != nil {
		return "" // no block, or one ADD refuses with its own error
	}
	reserved := make([]netip.Addr, len(reservations))
	for i, r := range reservations {
		reserved[i] = r.Addr
	}
	if err := ipam.Exhausted(block, reserved); err != nil {
		return "pods cannot be added: " + err.Error()
	}
	return ""
}

// checkWritable creates, writes and removes a file where an ADD would
// write its reservation: in dir, or, until the first ADD has created it, in
// the nearest of its parents that exists. A read-only or full file system
// is so noticed before an ADD fails on it. It returns the directory tried.
func checkWritable(dir string) (string, error) {
	for {
		if _, err := os.Lstat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	f, err := os.CreateTemp(dir, ".writable-*")
	if err != nil {
		return dir, err
	}
	_, werr := f.Write([]byte("grapevine\n"))
	return dir, errors.Join(werr, f.Close(), os.Remove(f.Name()))
}
