package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// doctorRuns is how many times doctor and status each run, alternating.
const doctorRuns = 10

// doctorTarget is issue 23's bound on doctor's run time on a healthy lab.
const doctorTarget = 5 * time.Second

// measureDoctor times `grapevine doctor` on host h of a healthy lab of
// hosts hosts beside `grapevine status`, the two alternating; doctor must
// pass every time, or the row says it did not.
func measureDoctor(ctx context.Context, h *lab.Host, hosts int) (Row, error) {
	row := Row{ID: "11", Measure: fmt.Sprintf("grapevine doctor on a healthy %d-host lab (median)", hosts), Unit: "ms",
		Samples: doctorRuns, Target: Target{Kind: AtMost, Limit: millis(doctorTarget)}}
	var doctor, status []time.Duration
	for range doctorRuns {
		start := time.Now()
		out, code, err := h.Doctor(ctx)
		took := time.Since(start)
		if err != nil {
			return row, err
		}
		if code != 0 {
			row.NotMeasured = fmt.Sprintf("doctor exited %d on the healthy lab", code)
			row.Note = strings.TrimSpace(string(out))
			return row, nil
		}
		doctor = append(doctor, took)
		start = time.Now()
		if _, err := h.StatusText(ctx, "json"); err != nil {
			return row, err
		}
		status = append(status, time.Since(start))
	}
	row.Value = millis(median(doctor))
	row.Peer = &Peer{Name: "grapevine status", Value: millis(median(status))}
	row.Note = fmt.Sprintf("slowest %.1f ms; doctor reads the status and the kernel and connects to the gossip and ledger ports of the %d peers", millis(slices.Max(doctor)), hosts-1)
	return row, nil
}
