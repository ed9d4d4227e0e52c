package meshtest

import (
	"cmp"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// Dilation slows a simulated cluster's clocks down by a factor: every
// protocol timer of its nodes (memberlist's probes, gossip and push-pull,
// raft's heartbeats and elections, autopilot, reconnects) lasts that many
// times longer in wall time, so a thousand nodes sharing two cores keep
// up with their timers. Simulated time is wall time divided by the factor;
// counts per simulated second (messages, bytes, RPCs) are then the
// protocol's, not the CPU's, as long as the process is not starved.
//
// Left unscaled are the mesh's and the ledger's fixed internal constants
// (retry backoffs, and call timeouts such as a ledger call's 5 s): they send
// nothing on their own while the cluster is healthy, and a timeout that is
// k times shorter in simulated time only makes a node give up sooner.
//
// A factor below 1 (the zero value included) means no dilation.
type Dilation float64

// Factor is the dilation as a number, at least 1.
func (k Dilation) Factor() float64 { return max(float64(k), 1) }

// Wall is how long a simulated duration d lasts in wall time.
func (k Dilation) Wall(d time.Duration) time.Duration {
	return time.Duration(float64(d) * k.Factor())
}

// Simulated is how much simulated time a wall-time duration d is.
func (k Dilation) Simulated(d time.Duration) time.Duration {
	return time.Duration(float64(d) / k.Factor())
}

// Memberlist stretches memberlist's timers. Suspicion timeouts follow
// ProbeInterval, push-pull's scaling with the cluster size follows
// PushPullInterval.
func (k Dilation) Memberlist(c *memberlist.Config) {
	for _, d := range []*time.Duration{
		&c.ProbeInterval, &c.ProbeTimeout, &c.GossipInterval, &c.GossipToTheDeadTime,
		&c.PushPullInterval, &c.TCPTimeout, &c.DeadNodeReclaimTime, &c.QueueCheckInterval,
	} {
		*d = k.Wall(*d)
	}
}

// Raft stretches raft's timers.
func (k Dilation) Raft(c *raft.Config) {
	for _, d := range []*time.Duration{
		&c.HeartbeatTimeout, &c.ElectionTimeout, &c.LeaderLeaseTimeout, &c.CommitTimeout, &c.SnapshotInterval,
	} {
		*d = k.Wall(*d)
	}
}

// Ledger stretches the ledger's autopilot timings (the defaults where
// unset) and, through its Tune hook, raft's timers after whatever Tune
// already sets.
func (k Dilation) Ledger(c *ledger.Config) {
	c.DeadVoterGrace = k.Wall(cmp.Or(c.DeadVoterGrace, ledger.DefaultDeadVoterGrace))
	c.StableAfter = k.Wall(cmp.Or(c.StableAfter, ledger.DefaultStableAfter))
	c.DeadNonvoterAfter = k.Wall(cmp.Or(c.DeadNonvoterAfter, ledger.DefaultDeadNonvoterAfter))
	tune := c.Tune
	c.Tune = func(r *raft.Config) {
		if tune != nil {
			tune(r)
		}
		k.Raft(r)
	}
}

// dilated returns opts with the dilation applied to its tune hooks and
// mesh timers; tune hooks run first, so the dilation stretches whatever
// timers they chose.
func (opts Options) dilated() Options {
	k := opts.Dilation
	if k.Factor() == 1 {
		return opts
	}
	tune, tuneLedger := opts.Tune, opts.TuneLedger
	opts.Tune = func(c *memberlist.Config) {
		tune(c)
		k.Memberlist(c)
	}
	opts.TuneLedger = func(c *ledger.Config) {
		tuneLedger(c)
		k.Ledger(c)
	}
	opts.ReconnectInterval = k.Wall(opts.ReconnectInterval)
	return opts
}
