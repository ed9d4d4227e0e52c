package ledger

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"

	"github.com/hashicorp/raft"
)

// Recover is the operator's way out when a ledger lost a majority of its
// voters for good: with this node's agent stopped, it rewrites the raft
// configuration in dir (<state-dir>/raft) so that this node is the only
// voter (raft's RecoverCluster). Started again, the node leads with every
// entry it has; live members rejoin as non-voters and autopilot promotes
// them. Entries committed only on the lost voters are lost with them; run
// it on the surviving voter with the highest last index.
func Recover(dir string, id NodeID, advertise netip.AddrPort) error {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stores, closeDisk, err := openDiskStores(dir, log)
	if err != nil {
		return err
	}
	defer closeDisk()
	return RecoverStores(stores, id, advertise)
}

// RecoverStores is Recover on already opened stores (tests keep them in
// memory).
func RecoverStores(s *Stores, id NodeID, advertise netip.AddrPort) error {
	if id.IsZero() || !advertise.IsValid() {
		return fmt.Errorf("ledger recover: need this node's ID and address, got %s at %s", id, advertise)
	}
	has, err := raft.HasExistingState(s.Log, s.Stable, s.Snapshots)
	if err != nil {
		return fmt.Errorf("ledger recover: %w", err)
	}
	if !has {
		return errors.New("ledger recover: no ledger state here to recover")
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id.String())
	conf.Logger = newHCLog(slog.New(slog.NewTextHandler(io.Discard, nil)), "raft")
	_, trans := raft.NewInmemTransport(raft.ServerAddress(advertise.String()))
	defer trans.Close()
	only := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: raft.ServerAddress(advertise.String())}}}
	if err := raft.RecoverCluster(conf, newFSM(nil, nil), s.Log, s.Stable, s.Snapshots, trans, only); err != nil {
		return fmt.Errorf("ledger recover: %w", err)
	}
	return nil
}
