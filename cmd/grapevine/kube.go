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
// been handed over, or after kubeFirstSeedsWait: the mesh must not start
// without seeds, or a new node would claim a block as a majority of one and
// a restarted node would believe it is alone.
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
			once.Do(func() { close(first) })
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
