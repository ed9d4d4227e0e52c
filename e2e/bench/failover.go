package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// failoverTrials crashes the ledger leader's host (link cut, kill -9)
// trials times and times until every other host follows a new leader;
// the host comes back between trials. The routes do not wait on this: a
// failover delays only claims.
func (b *labBench) failoverTrials(ctx context.Context, hosts []*lab.Host, trials int) (Row, error) {
	row := Row{ID: "8e", Measure: "ledger failover: leader's host crashes until every other host follows a new leader", Unit: "s"}
	var took []time.Duration
	for i := range trials {
		d, err := b.failover(ctx, hosts)
		if err != nil {
			return row, fmt.Errorf("failover trial %d: %w", i+1, err)
		}
		took = append(took, d)
		b.log.Info("failover", "trial", i+1, "after", d)
	}
	row.Value, row.Samples = seconds(median(took)), len(took)
	row.Note = fmt.Sprintf("median of %d; each %v; polled every 250 ms; raft heartbeat timeout 10 s, but voters stand as soon as gossip calls the leader dead",
		len(took), took)
	return row, nil
}

func (b *labBench) failover(ctx context.Context, hosts []*lab.Host) (d time.Duration, err error) {
	waitCtx, cancel := context.WithTimeout(ctx, crashTimeout)
	defer cancel()
	var leader *lab.Host
	err = poll.Until(waitCtx, fmt.Sprintf("a ledger leader among %d hosts", len(hosts)), 250*time.Millisecond, func() error {
		for _, h := range hosts {
			s, err := h.Status(waitCtx)
			if err != nil {
				return err
			}
			if s.Ledger.Role == "leader" {
				leader = h
				return nil
			}
		}
		return errors.New("no host leads")
	})
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := leader.CutLink(ctx); err != nil {
		return 0, err
	}
	if err := leader.KillAgent(); err != nil {
		return 0, errors.Join(err, leader.RestoreLink(context.WithoutCancel(ctx)))
	}
	for _, h := range hosts {
		if h == leader {
			continue
		}
		if _, err := h.WaitStatus(waitCtx, "a new ledger leader", func(s lab.Status) bool {
			return s.Ledger.Leader != "" && s.Ledger.Leader != leader.Name
		}); err != nil {
			return 0, errors.Join(err, leader.RestoreLink(context.WithoutCancel(ctx)))
		}
	}
	d = time.Since(t0)
	if err := leader.RestoreLink(ctx); err != nil {
		return d, err
	}
	if err := leader.StartAgent(ctx); err != nil {
		return d, err
	}
	if _, err := lab.WaitMesh(waitCtx, hosts); err != nil {
		return d, err
	}
	return d, poll.Sleep(ctx, quiet)
}
