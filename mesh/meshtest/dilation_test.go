package meshtest

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// TestDilation: every protocol timer of memberlist, raft and autopilot is
// stretched by the factor, after the tune hooks chose them; a factor below
// 1 stretches nothing.
func TestDilation(t *testing.T) {
	for _, tc := range []struct {
		k    Dilation
		want float64 // how many times longer each timer gets
	}{
		{0, 1},
		{0.5, 1},
		{1, 1},
		{4, 4},
		{2.5, 2.5},
	} {
		scaled := func(d time.Duration) time.Duration { return time.Duration(float64(d) * tc.want) }
		opts := Options{
			// The hooks run first: the dilation stretches what they chose.
			Tune:              func(c *memberlist.Config) { c.GossipInterval = 100 * time.Millisecond },
			TuneLedger:        func(c *ledger.Config) { c.StableAfter = time.Second },
			ReconnectInterval: 30 * time.Second,
			Dilation:          tc.k,
		}.dilated()

		ml, base := memberlist.DefaultLANConfig(), memberlist.DefaultLANConfig()
		opts.Tune(ml)
		base.GossipInterval = 100 * time.Millisecond
		for _, f := range []struct {
			name      string
			got, from time.Duration
		}{
			{"ProbeInterval", ml.ProbeInterval, base.ProbeInterval},
			{"ProbeTimeout", ml.ProbeTimeout, base.ProbeTimeout},
			{"GossipInterval", ml.GossipInterval, base.GossipInterval},
			{"GossipToTheDeadTime", ml.GossipToTheDeadTime, base.GossipToTheDeadTime},
			{"PushPullInterval", ml.PushPullInterval, base.PushPullInterval},
			{"TCPTimeout", ml.TCPTimeout, base.TCPTimeout},
			{"DeadNodeReclaimTime", ml.DeadNodeReclaimTime, base.DeadNodeReclaimTime},
			{"QueueCheckInterval", ml.QueueCheckInterval, base.QueueCheckInterval},
			{"ReconnectInterval", opts.ReconnectInterval, 30 * time.Second},
		} {
			if f.got != scaled(f.from) {
				t.Errorf("dilation %g: %s = %v, want %v", float64(tc.k), f.name, f.got, scaled(f.from))
			}
		}
		if ml.SuspicionMult != base.SuspicionMult || ml.RetransmitMult != base.RetransmitMult {
			t.Errorf("dilation %g changed memberlist's multipliers", float64(tc.k))
		}

		var lc ledger.Config
		opts.TuneLedger(&lc)
		for _, f := range []struct {
			name      string
			got, from time.Duration
		}{
			{"StableAfter", lc.StableAfter, time.Second},
			{"DeadVoterGrace", lc.DeadVoterGrace, ledger.DefaultDeadVoterGrace},
			{"DeadNonvoterAfter", lc.DeadNonvoterAfter, ledger.DefaultDeadNonvoterAfter},
		} {
			// Unset autopilot timings are the defaults, stretched; with
			// no dilation they stay as the hook left them.
			want := scaled(f.from)
			if tc.want == 1 && f.name != "StableAfter" {
				want = 0
			}
			if f.got != want {
				t.Errorf("dilation %g: %s = %v, want %v", float64(tc.k), f.name, f.got, want)
			}
		}
		rc := raft.DefaultConfig()
		rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout, rc.CommitTimeout = 3*time.Second, 3*time.Second, 1500*time.Millisecond, 5*time.Second
		if lc.Tune != nil {
			lc.Tune(rc)
		}
		for _, f := range []struct {
			name      string
			got, from time.Duration
		}{
			{"HeartbeatTimeout", rc.HeartbeatTimeout, 3 * time.Second},
			{"ElectionTimeout", rc.ElectionTimeout, 3 * time.Second},
			{"LeaderLeaseTimeout", rc.LeaderLeaseTimeout, 1500 * time.Millisecond},
			{"CommitTimeout", rc.CommitTimeout, 5 * time.Second},
			{"SnapshotInterval", rc.SnapshotInterval, raft.DefaultConfig().SnapshotInterval},
		} {
			if f.got != scaled(f.from) {
				t.Errorf("dilation %g: raft %s = %v, want %v", float64(tc.k), f.name, f.got, scaled(f.from))
			}
		}

		if got, want := tc.k.Simulated(tc.k.Wall(3*time.Second)), 3*time.Second; got != want {
			t.Errorf("dilation %g: 3 s simulated is %v of wall time, which is %v simulated", float64(tc.k), tc.k.Wall(3*time.Second), got)
		}
	}
}
