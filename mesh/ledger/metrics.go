package ledger

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector

	applies  *prometheus.CounterVec
	rejected *prometheus.CounterVec
	reclaims prometheus.Counter
	raftRPCs *prometheus.CounterVec
}

// newMetrics registers the ledger's metrics; the gauges read raft on scrape.
func newMetrics(reg prometheus.Registerer, leader, lastIndex, appliedIndex func() float64) (*metrics, error) {
	m := &metrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_ledger_applies_total",
			Help: "Ledger entries applied to this node's state, by operation and result (ok, refused).",
		}, []string{"op", "result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_ledger_rpc_rejected_total",
			Help: "Ledger connections and RPCs refused, by reason (tls, mux, busy, size, decode, identity, foreign-cluster, pool-mismatch, node-alive, ...).",
		}, []string{"reason"}),
		reclaims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_ledger_reclaims_total",
			Help: "Blocks this node reclaimed as leader from owners not alive in gossip whose lease had ended.",
		}),
		raftRPCs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_ledger_raft_rpcs_sent_total",
			Help: "Raft RPCs this node sent, by kind (heartbeat, append_entries, request_vote, request_pre_vote, install_snapshot, timeout_now): an idle leader sends each follower a few a second.",
		}, []string{"kind"}),
	}
	cs := []prometheus.Collector{
		m.applies, m.rejected, m.reclaims, m.raftRPCs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grapevine_ledger_leader",
			Help: "1 if this node is the ledger's raft leader.",
		}, leader),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grapevine_ledger_last_index",
			Help: "Last index of this node's ledger log.",
		}, lastIndex),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grapevine_ledger_applied_index",
			Help: "Last ledger log index applied to this node's state.",
		}, appliedIndex),
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m.reg = reg
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			m.unregister()
			return nil, fmt.Errorf("register ledger metrics (one running ledger per registry): %w", err)
		}
		m.collectors = append(m.collectors, c)
	}
	return m, nil
}

// unregister lets a restarted ledger register on the same registry.
func (m *metrics) unregister() {
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
	m.collectors = nil
}

func (m *metrics) apply(op string, err error) {
	result := "ok"
	if err != nil {
		result = "refused"
	}
	m.applies.WithLabelValues(op, result).Inc()
}
