package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// TestKubernetesFounderLostItsDisk is trace 3 of issue 18: with
// --join-kubernetes, the agent that founded the ledger restarts with an
// empty state directory while its seeds are silent. It must find the
// ledger recorded in the Kubernetes API and wait to join it, never found a
// second one, and join it once the seeds answer.
func TestKubernetesFounderLostItsDisk(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	kube := newFakeKube()
	names := []string{"h1", "h2", "h3"}
	for i, name := range names {
		kube.register(name, meshtest.HostAddr(i+1))
	}
	hosts := map[string]*testHost{}
	for i, name := range names {
		hosts[name] = startKubeHost(t, network, kube, dir, name, i+1)
	}
	waitFor(t, "all hosts to route each other", func() error { return routesTo(hosts["h1"], hosts["h2"], hosts["h3"]) })
	rec, ok := kube.recorded()
	if !ok {
		t.Fatal("the ledger was founded without a record in the Kubernetes API")
	}
	cluster := hosts["h1"].agent.mesh.View().Ledger.ClusterID
	if rec.ClusterID != cluster.String() {
		t.Fatalf("record names ledger %s, the agents hold %s", rec.ClusterID, cluster)
	}
	for _, h := range hosts {
		if got := h.agent.mesh.View().Ledger.ClusterID; got != cluster {
			t.Fatalf("%s holds ledger %s, h1 holds %s", h.name, got, cluster)
		}
	}
	waitFor(t, "three voters, so the ledger outlives its founder", func() error {
		if v := hosts["h1"].agent.mesh.View().Ledger.Voters; len(v) != 3 {
			return fmt.Errorf("voters %v", v)
		}
		return nil
	})
	founder := hosts[rec.Founder]
	if founder == nil {
		t.Fatalf("record names founder %q, not a host", rec.Founder)
	}
	var others []netip.Addr
	for _, h := range hosts {
		if h != founder {
			others = append(others, h.addr)
		}
	}

	// The founder's disk is lost; it comes back cut off from its seeds.
	founder.stop(t)
	if err := os.RemoveAll(filepath.Join(dir, founder.name)); err != nil {
		t.Fatal(err)
	}
	network.Partition([]netip.Addr{founder.addr}, others)
	i := map[string]int{"h1": 1, "h2": 2, "h3": 3}[founder.name]
	founder = startKubeHost(t, network, kube, dir, founder.name, i)
	hosts[founder.name] = founder
	waitFor(t, "the restarted founder to name the recorded ledger it waits for", func() error {
		v := founder.agent.mesh.View()
		if !v.Ledger.ClusterID.IsZero() {
			return fmt.Errorf("it holds ledger %s while its seeds are silent", v.Ledger.ClusterID)
		}
		if !strings.Contains(v.Reason, rec.ClusterID) {
			return fmt.Errorf("reason %q does not name the recorded ledger", v.Reason)
		}
		return nil
	})
	// Longer than the 2 s after which the oldest Node's agent founded a
	// second ledger before the record.
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		v := founder.agent.mesh.View()
		if !v.Ledger.ClusterID.IsZero() || v.Ready {
			t.Fatalf("cut off with an empty state dir, the founder holds ledger %s (ready %v, block %s)", v.Ledger.ClusterID, v.Ready, v.Block)
		}
	}

	network.Heal()
	waitFor(t, "the founder to join the recorded ledger", func() error {
		v := founder.agent.mesh.View()
		if v.Ledger.ClusterID != cluster {
			return fmt.Errorf("it holds ledger %s, want %s (reason %q, members %+v)", v.Ledger.ClusterID, cluster, v.Reason, v.Members)
		}
		if !v.Ready {
			return errors.New("not ready: " + v.Reason)
		}
		return nil
	})
	waitFor(t, "all hosts to route each other again", func() error { return routesTo(hosts["h1"], hosts["h2"], hosts["h3"]) })
	if n := kube.createCount(); n > 2*len(names)+2 {
		t.Errorf("%d creates of the ledger's record: agents poll the API server", n)
	}
}
