package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/mesh/kubejoin"
)

const (
	// kubeRefreshInterval is how often Node objects are listed again for
	// new seed addresses.
	kubeRefreshInterval = time.Minute
	// kubeFirstSeedsWait bounds how long the agent waits for the first list
	// before it starts gossip anyway (with whatever --join gives).
	kubeFirstSeedsWait = 10 * time.Second
)

// joinKubernetes feeds the InternalIPs of the cluster's Node objects to the
// mesh as seed addresses until ctx ends. It returns once the first list has
// been handed over, or after kubeFirstSeedsWait. The first list also decides
// founding: the agent on the oldest Node founds the ledger of a new cluster
// (unless a member it reaches belongs to one already), every other agent
// joins it, so a kubeadm cluster whose agents all start at once forms
// exactly one ledger. Without a list, the agent never founds.
func (a *agent) joinKubernetes(ctx context.Context) error {
	client, err := kubejoin.NewInClusterClient()
	if err != nil {
		return fmt.Errorf("--join-kubernetes: %w", err)
	}
	d := kubejoin.New(client, a.opts.NodeName, a.log.With("component", "kubejoin"))
	first := make(chan struct{})
	var once sync.Once
	go func() {
		err := d.Run(ctx, kubeRefreshInterval, func(disc kubejoin.Discovery) {
			a.mesh.AddJoinAddrs(disc.Seeds...)
			once.Do(func() {
				if disc.Founder(a.opts.NodeName) {
					a.log.Info("this is the oldest Node: it founds the cluster's ledger unless a member already has one")
					a.mesh.AllowFounding()
				}
				close(first)
			})
		})
		if err != nil && ctx.Err() == nil {
			a.log.Error("kubernetes discovery stopped", "err", err)
		}
	}()
	select {
	case <-first:
	case <-time.After(kubeFirstSeedsWait):
		a.log.Warn("no seed addresses from the Kubernetes API yet; starting gossip without them", "waited", kubeFirstSeedsWait)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
