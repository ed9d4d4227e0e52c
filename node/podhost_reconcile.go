package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostveth"
)

// PodKernel is what the Reconciler asks of the host for the pods' host
// sides. Only writes that put back what the plugin set up are ever made:
// nothing of a pod's is deleted here.
type PodKernel interface {
	// HostVeths lists the veths whose alias begins with aliasPrefix, each
	// with its pod side's MAC where the kernel tells it.
	HostVeths(aliasPrefix string) ([]HostVeth, error)
	// PodRoutes lists the main table's IPv4 /32 and IPv6 /128 routes of
	// every protocol but RouteProtocol.
	PodRoutes() ([]Route, error)
	// ReplacePodRoute writes `<r.Dst> dev <r.LinkIndex> scope link` into
	// r's slot as the plugin does, overwriting whatever holds it.
	ReplacePodRoute(r Route) error
	// PodNeighbours lists the IPv4 and IPv6 neighbour entries of every
	// link.
	PodNeighbours() ([]PodNeighbour, error)
	// SetPodNeighbour adds or replaces a PERMANENT entry.
	SetPodNeighbour(n PodNeighbour) error
	// Sysctl reads a setting under /proc/sys; one the kernel lacks yields
	// an error wrapping fs.ErrNotExist.
	Sysctl(key string) (string, error)
	SetSysctl(s Sysctl) error
}

// PodResult describes one pass over the pods' host sides.
type PodResult struct {
	// Pods counts the pods with a host side to keep.
	Pods int
	// Unsettled counts the pods left alone because their veth is younger
	// than PodSpec.Settle; a pass after Settle looks at them again.
	Unsettled int
	// Routes, Neighbours and Sysctls count the writes of this pass.
	Routes, Neighbours, Sysctls int
	// Veths is the network's host veths as this pass listed them, and
	// VethsListed says whether it could list them: only a listing tells
	// which attachments are gone (see ipam.CollectStale).
	Veths       []HostVeth
	VethsListed bool
}

// ReconcilePods runs one pass over the pods' host sides: list the host
// veths, pair them with spec's reservations (DesiredPodHosts), compare with
// the kernel (PlanPodHosts) and put back what is missing or changed. A
// pod that cannot be repaired does not stop the others; the returned error
// joins every failure. Running it again with nothing changed writes nothing.
func (r *Reconciler) ReconcilePods(ctx context.Context, spec PodSpec) (PodResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res PodResult
	veths, err := r.kernel.HostVeths(spec.Network + "/")
	if err != nil {
		return res, fmt.Errorf("pods: %w", err)
	}
	res.Veths, res.VethsListed = veths, true
	pods, problems := DesiredPodHosts(spec, veths)
	res.Pods = len(pods)
	pods, res.Unsettled = r.settledPods(pods, veths, spec.Settle)
	if len(pods) == 0 {
		return res, errors.Join(problems...)
	}
	routes, err := r.kernel.PodRoutes()
	if err != nil {
		return res, errors.Join(append(problems, fmt.Errorf("pods: %w", err))...)
	}
	neighs, err := r.kernel.PodNeighbours()
	if err != nil {
		return res, errors.Join(append(problems, fmt.Errorf("pods: %w", err))...)
	}
	sysctls := make(map[string]string)
	seen := make(map[string]bool)
	for _, p := range pods {
		if seen[p.Veth.Name] {
			continue
		}
		seen[p.Veth.Name] = true
		for _, s := range hostveth.Sysctls(p.Veth.Name) {
			v, err := r.kernel.Sysctl(s.Key)
			switch {
			case err == nil:
				sysctls[s.Key] = v
			case !errors.Is(err, fs.ErrNotExist):
				problems = append(problems, err)
			}
		}
	}
	plan, planProblems := PlanPodHosts(pods, routes, neighs, sysctls)
	problems = append(problems, planProblems...)
	// put counts one repair, or its failure, by kind.
	put := func(kind string, err error) bool {
		if err != nil {
			r.metrics.podErrors.WithLabelValues(kind).Inc()
			problems = append(problems, err)
			return false
		}
		r.metrics.podRepairs.WithLabelValues(kind).Inc()
		return true
	}
	for _, rt := range plan.Routes {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(problems, err)...)
		}
		if put("route", r.kernel.ReplacePodRoute(rt)) {
			res.Routes++
			r.log.Warn("put back a pod's route", "dst", rt.Dst, "ifindex", rt.LinkIndex)
		}
	}
	for _, n := range plan.Neighbours {
		if put("neighbour", r.kernel.SetPodNeighbour(n)) {
			res.Neighbours++
			r.log.Warn("put back a pod's neighbour entry", "ip", n.IP, "lladdr", n.MAC, "ifindex", n.LinkIndex)
		}
	}
	for _, sc := range plan.Sysctls {
		if put("sysctl", r.kernel.SetSysctl(sc)) {
			res.Sysctls++
			r.log.Warn("put back a pod veth's setting", "key", sc.Key, "value", sc.Value)
		}
	}
	return res, errors.Join(problems...)
}

// vethKey tells a veth from a later one of the same name.
type vethKey struct {
	name  string
	index int
}

// settledPods keeps the pods whose veth the passes have seen for at least
// settle, and counts the others. It remembers when each veth was first seen
// and forgets the veths that are gone.
func (r *Reconciler) settledPods(pods []PodHost, veths []HostVeth, settle time.Duration) ([]PodHost, int) {
	now := time.Now()
	seen := make(map[vethKey]time.Time, len(veths))
	for _, v := range veths {
		k := vethKey{v.Name, v.Index}
		first, ok := r.vethSeen[k]
		if !ok {
			first = now
		}
		seen[k] = first
	}
	r.vethSeen = seen
	settled := pods[:0:0]
	for _, p := range pods {
		if now.Sub(seen[vethKey{p.Veth.Name, p.Veth.Index}]) >= settle {
			settled = append(settled, p)
		}
	}
	return settled, len(pods) - len(settled)
}
