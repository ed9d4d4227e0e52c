package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// podSettle is how long a host veth must have been seen before the agent
// repairs its pod's host side: ADD labels the veth first and routes the pod
// after, in well under this even on a loaded host, and a repair meanwhile
// would only race the plugin.
const podSettle = 3 * time.Second

// storeDir is the IPAM store the conflist names: the plugin's reservations
// for this network.
func (a *agent) storeDir() string {
	return filepath.Join(nodestate.IPAMDataDir(a.opts.StateDir), node.NetworkName)
}

// tendPods puts back the pods' host sides (see node.Reconciler.ReconcilePods)
// and says why an ADD could not succeed now, "" when it could: the state
// directory refuses writes, or every address of the block is reserved. A
// pod that cannot be repaired is logged, when its reason first appears or
// changes, and does not make the node unready: other pods still can be
// added.
func (a *agent) tendPods(ctx context.Context, block netip.Prefix) string {
	reservations, readErr := node.ReadReservations(a.storeDir())
	if readErr == nil {
		spec := node.PodSpec{Network: node.NetworkName, Pool: a.opts.Pool, Reservations: reservations, Settle: podSettle}
		res, err := a.rec.ReconcilePods(ctx, spec)
		a.logPodErrors(err)
		a.podRecheck = nil
		if res.Unsettled > 0 {
			a.podRecheck = time.After(podSettle)
		}
		if res.Routes+res.Neighbours+res.Sysctls > 0 {
			a.log.Info("pods' host sides put back", "pods", res.Pods, "routes", res.Routes, "neighbours", res.Neighbours, "settings", res.Sysctls)
		}
	} else {
		a.logPodErrors(readErr)
	}
	if dir, err := checkWritable(a.storeDir()); err != nil {
		return fmt.Sprintf("pods cannot be added: %s does not take writes: %v", dir, err)
	}
	if readErr == nil {
		return exhausted(block, reservations)
	}
	return ""
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
	if !block.IsValid() {
		return ""
	}
	first, last, err := ipam.UsableRange(block)
	if err != nil {
		return ""
	}
	held := make(map[netip.Addr]bool, len(reservations))
	for _, r := range reservations {
		if r.Addr.Compare(first) >= 0 && r.Addr.Compare(last) <= 0 {
			held[r.Addr] = true
		}
	}
	usable := 1<<(32-block.Bits()) - 2
	if len(held) < usable {
		return ""
	}
	return fmt.Sprintf("pods cannot be added: block %s is exhausted: all %d addresses %s-%s are reserved", block, usable, first, last)
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
