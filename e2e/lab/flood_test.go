package lab

import "testing"

func TestCounters(t *testing.T) {
	metrics := `# HELP grapevine_ledger_rpc_rejected_total Ledger connections and RPCs refused, by reason.
# TYPE grapevine_ledger_rpc_rejected_total counter
grapevine_ledger_rpc_rejected_total{reason="handshake-busy"} 1234
grapevine_ledger_rpc_rejected_total{reason="handshake-timeout"} 5.67e+02
grapevine_ledger_rpc_rejected_total_other{reason="x"} 1
grapevine_ledger_applies_total{op="claim",result="ok"} 3
grapevine_ledger_rpc_rejected_total{reason="broken"
`
	got := Counters(metrics, "grapevine_ledger_rpc_rejected_total")
	if len(got) != 2 || got["handshake-busy"] != 1234 || got["handshake-timeout"] != 567 {
		t.Fatalf("counters %v", got)
	}
}
