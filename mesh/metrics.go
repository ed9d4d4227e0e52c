package mesh

import "github.com/prometheus/client_golang/prometheus"

// metrics are the mesh's Prometheus series. They exist (unregistered) even
// without a Registerer, so the code that counts never checks for nil. The
// ledger registers its own (leader, voters, log index).
type metrics struct {
	members          *prometheus.GaugeVec
	foreignMembers   prometheus.Gauge
	claims           *prometheus.CounterVec
	fenced           prometheus.Counter
	releases         *prometheus.CounterVec
	nameConflicts    prometheus.Counter
	nameConflictsNow prometheus.Gauge
	idConflicts      prometheus.Counter
	rejectedMetadata *prometheus.CounterVec
	foreignLedger    prometheus.Gauge
	rejectedGossip   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grapevine_mesh_members", Help: "Known members other than this node, by state.",
		}, []string{"state"}),
		foreignMembers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grapevine_mesh_foreign_members", Help: "Members that belong to another ledger (same gossip key, founded separately); never routed.",
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_claims_total", Help: "Block claims sent to the ledger, by result: succeeded, renewed (the lease), restored (restart rule), no_leader, exhausted, identity, error.",
		}, []string{"result"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_mesh_fenced_total", Help: "Times this node stopped using a block the ledger no longer assigns to it.",
		}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_releases_total", Help: "Blocks of departed nodes this node had the ledger release, by trigger: operator (grapevine release), record_deleted (the node's Kubernetes Node object was deleted).",
		}, []string{"trigger"}),
		nameConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_mesh_name_conflicts_total", Help: "Name conflicts seen: live hosts with different node IDs advertising one node name.",
		}),
		nameConflictsNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grapevine_mesh_name_conflicts", Help: "Node names that live hosts with different node IDs advertise now (this node included); only one of each holds a block.",
		}),
		idConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_mesh_id_conflicts_total", Help: "Hosts seen gossiping under the node ID of another live member (a copied state directory).",
		}),
		rejectedMetadata: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_rejected_metadata_total", Help: "Member metadata values rejected, by reason.",
		}, []string{"reason"}),
		foreignLedger: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grapevine_mesh_foreign_ledger", Help: "1 while this node's ledger state belongs to another ledger than the cluster's (it hands out no addresses until `grapevine ledger reset`).",
		}),
		rejectedGossip: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_rejected_gossip_total", Help: "Gossip packets and streams from the network that memberlist dropped, by reason: decrypt (without this cluster's key), label, checksum, malformed.",
		}, []string{"reason"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.members, m.foreignMembers, m.claims, m.fenced, m.releases, m.nameConflicts, m.nameConflictsNow, m.idConflicts, m.rejectedMetadata, m.rejectedGossip, m.foreignLedger} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
