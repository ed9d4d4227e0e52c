package main

import (
	"context"
	"fmt"
	"time"

	"github.com/grapevine-net/grapevine/mesh/kubejoin"
)

// kubeRefreshInterval is how often Node objects are listed again for new
// seed addresses.
const kubeRefreshInterval = time.Minute

// joinKubernetes feeds the InternalIPs of the cluster's Node objects to the
// mesh as seed addresses, and keeps doing so until ctx ends.
func (a *agent) joinKubernetes(ctx context.Context) error {
	client, err := kubejoin.NewClient(a.opts.Kubeconfig)
	if err != nil {
		return fmt.Errorf("--join-kubernetes: %w", err)
	}
	d := kubejoin.New(client, a.opts.NodeName, a.log.With("component", "kubejoin"))
	go func() {
		err := d.Run(ctx, kubeRefreshInterval, func(addrs []string) { a.mesh.AddJoinAddrs(addrs...) })
		if err != nil && ctx.Err() == nil {
			a.log.Error("kubernetes discovery stopped", "err", err)
		}
	}()
	return nil
}
