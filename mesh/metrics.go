package mesh

import "github.com/prometheus/client_golang/prometheus"

// metrics are the mesh's Prometheus series. They exist (unregistered) even
// without a Registerer, so the code that counts never checks for nil.
type metrics struct {
	members          *prometheus.GaugeVec
	claimAttempts    prometheus.Counter
	claims           *prometheus.CounterVec
	conflicts        prometheus.Counter
	rejectedMetadata *prometheus.CounterVec
	rejectedRecords  *prometheus.CounterVec
	votes            *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grapevine_mesh_members", Help: "Known members other than this node, by state.",
		}, []string{"state"}),
		claimAttempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_mesh_claim_attempts_total", Help: "Block claims this node started (one vote each).",
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_claims_total", Help: "Block claims by result: succeeded, restored, no_quorum, contended, exhausted, error.",
		}, []string{"result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_mesh_conflicts_total", Help: "Blocks found advertised by two live members (this node's block or peers').",
		}),
		rejectedMetadata: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_rejected_metadata_total", Help: "Member metadata values rejected, by reason.",
		}, []string{"reason"}),
		rejectedRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_rejected_records_total", Help: "Gossip messages and claim records rejected, by reason.",
		}, []string{"reason"}),
		votes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_mesh_votes_total", Help: "Votes this node cast for other claimants, by result: granted, refused.",
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.members, m.claimAttempts, m.claims, m.conflicts, m.rejectedMetadata, m.rejectedRecords, m.votes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
