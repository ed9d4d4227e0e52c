package main

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// peerSignalCollector exports, per peer, which signals keep its route and
// when each was last confirmed. It reads the status at scrape time, so a
// peer that is gone leaves no stale series behind.
type peerSignalCollector struct{ a *agent }

var (
	peerRouteSignalDesc = prometheus.NewDesc("grapevine_peer_route_signal",
		"1 while the signal keeps the peer's route: gossip (memberlist counts the peer in) or data_path (its host answers echo requests).",
		[]string{"peer", "id", "signal"}, nil)
	peerSignalSeenDesc = prometheus.NewDesc("grapevine_peer_signal_last_confirmed_timestamp_seconds",
		"When the signal last confirmed the peer: memberlist counted it in (gossip), its host answered an echo request (data_path).",
		[]string{"peer", "id", "signal"}, nil)
)

func (c peerSignalCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerRouteSignalDesc
	ch <- peerSignalSeenDesc
}

func (c peerSignalCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.a.freshStatus().Members {
		for _, s := range []struct {
			label, name string
			seen        float64
		}{
			{"gossip", signalGossip, unixSeconds(m.GossipSeen)},
			{"data_path", signalDataPath, unixSeconds(m.DataPathSeen)},
		} {
			kept := 0.0
			if slices.Contains(m.KeptBy, s.name) {
				kept = 1
			}
			ch <- prometheus.MustNewConstMetric(peerRouteSignalDesc, prometheus.GaugeValue, kept, m.Name, m.ID, s.label)
			if s.seen > 0 {
				ch <- prometheus.MustNewConstMetric(peerSignalSeenDesc, prometheus.GaugeValue, s.seen, m.Name, m.ID, s.label)
			}
		}
	}
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
