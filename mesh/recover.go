package mesh

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// DefaultProbeTimeout bounds each dial of a voter's port by RecoverLedger.
const DefaultProbeTimeout = 2 * time.Second

// RecoverOptions say how RecoverLedger finds out whether the voters it
// would drop are still up.
type RecoverOptions struct {
	// LedgerAddr is this node's ledger address (host IP, --ledger-port).
	LedgerAddr netip.AddrPort
	// GossipPort is the gossip port the voters listen on (every agent's
	// --port; zero: DefaultPort). Each voter is dialled at its ledger
	// host IP on this port and on its ledger port.
	GossipPort int
	// ProbeTimeout bounds each dial (zero: DefaultProbeTimeout).
	ProbeTimeout time.Duration
}

// RecoverLedger makes the node whose state is in stateDir the only voter of
// a new ledger that holds every entry of its replica, for a cluster that
// lost a majority of its voters for good. The agent must be stopped. It
// refuses while any other voter answers on its ledger or gossip port: a
// voter that answers may be part of a majority that still commits, and
// recovering beside it splits the ledger. The recovered ledger has a new
// cluster ID: the members of the old one are foreign to it until they
// rejoin it (docs/operations.md).
func RecoverLedger(ctx context.Context, stateDir string, o RecoverOptions) (ledger.Recovery, error) {
	id, err := ledger.LoadOrCreateNodeID(stateDir)
	if err != nil {
		return ledger.Recovery{}, fmt.Errorf("node ID in %s: %w", stateDir, err)
	}
	timeout := o.ProbeTimeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	dial := func(ctx context.Context, addr netip.AddrPort) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		return c.Close()
	}
	gossipPort := o.GossipPort
	if gossipPort <= 0 {
		gossipPort = DefaultPort
	}
	check := ledger.RefuseAnswering(ctx, dial, uint16(gossipPort))
	rec, err := ledger.Recover(ledgerDir(stateDir), id, o.LedgerAddr, check)
	if err != nil {
		return ledger.Recovery{}, fmt.Errorf("recover the ledger in %s: %w", ledgerDir(stateDir), err)
	}
	return rec, nil
}
