package bench

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is one run's table and the machine it ran on.
type Report struct {
	Started time.Time `json:"started"`
	Elapsed string    `json:"elapsed"`
	Machine Machine   `json:"machine"`
	Rows    []Row     `json:"rows"`
	// Errors lists the measurements that failed; their rows are missing.
	Errors []string `json:"errors,omitempty"`
}

// Machine describes where a report was measured.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"goVersion"`
	// LoadStart and LoadEnd are the 1-minute load averages around the run:
	// other work on the machine shows up here.
	LoadStart float64 `json:"loadStart"`
	LoadEnd   float64 `json:"loadEnd"`
}

// Row is one figure of the table.
type Row struct {
	ID      string  `json:"id"`
	Measure string  `json:"measure"`
	Unit    string  `json:"unit"`
	Value   float64 `json:"value"`
	// Samples is how many measurements Value summarises.
	Samples int    `json:"samples"`
	Peer    *Peer  `json:"peer,omitempty"`
	Target  Target `json:"target"`
	// Pass is nil for figures without a target.
	Pass *bool `json:"pass,omitempty"`
	// NotMeasured, when set, replaces Value: the row could not measure what
	// it names, and says so ("not converged"). Pass is then whatever the
	// measurement set (a bound can still miss a target), never judged.
	NotMeasured string `json:"notMeasured,omitempty"`
	Note        string `json:"note,omitempty"`
}

// Peer is the figure Grapevine is compared with: measured in the same run,
// or published (a fixed anchor from elsewhere, labelled as such).
type Peer struct {
	Name      string  `json:"name"`
	Value     float64 `json:"value,omitempty"`
	Published bool    `json:"published,omitempty"`
	// Text replaces the value when the peer has none ("never").
	Text string `json:"text,omitempty"`
}

// TargetKind says how a Row's value is judged.
type TargetKind string

const (
	NoTarget    TargetKind = ""
	AtMost      TargetKind = "at most"         // Value <= Limit
	AtMostPeer  TargetKind = "at most x peer"  // Value <= Limit * Peer.Value
	AtLeastPeer TargetKind = "at least x peer" // Value >= Limit * Peer.Value
)

// Target is what a Row's value must meet.
type Target struct {
	Kind  TargetKind `json:"kind,omitempty"`
	Limit float64    `json:"limit,omitempty"`
}

func (t Target) String(unit string) string {
	switch t.Kind {
	case AtMost:
		return "≤ " + formatValue(t.Limit, unit)
	case AtMostPeer:
		return "≤ " + strconv.FormatFloat(t.Limit, 'g', -1, 64) + " × peer"
	case AtLeastPeer:
		return "≥ " + strconv.FormatFloat(t.Limit, 'g', -1, 64) + " × peer"
	}
	return "—"
}

// judge fills in Pass from the target.
func (r *Row) judge() {
	if r.NotMeasured != "" {
		return
	}
	var ok bool
	switch r.Target.Kind {
	case AtMost:
		ok = r.Value <= r.Target.Limit
	case AtMostPeer, AtLeastPeer:
		if r.Peer == nil || r.Peer.Value == 0 {
			return
		}
		ratio := r.Value / r.Peer.Value
		ok = ratio <= r.Target.Limit
		if r.Target.Kind == AtLeastPeer {
			ok = ratio >= r.Target.Limit
		}
	default:
		return
	}
	r.Pass = &ok
}

// Add judges rows and appends them.
func (rep *Report) Add(rows ...Row) {
	for i := range rows {
		rows[i].judge()
	}
	rep.Rows = append(rep.Rows, rows...)
}

// Print writes the report as a table.
func (rep *Report) Print(w io.Writer) error {
	m := rep.Machine
	fmt.Fprintf(w, "Grapevine benchmarks, %s, %s\n", rep.Started.UTC().Format(time.RFC3339), rep.Elapsed)
	fmt.Fprintf(w, "machine: %d CPUs (%s), Linux %s, %s, load %.2f at start, %.2f at end\n\n",
		m.CPUs, m.CPUModel, m.Kernel, m.GoVersion, m.LoadStart, m.LoadEnd)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tmeasure\tgrapevine\tn\tpeer\tratio\ttarget\tresult")
	for _, r := range rep.Rows {
		peer, ratio := "—", "—"
		value := formatValue(r.Value, r.Unit)
		if r.NotMeasured != "" {
			value = r.NotMeasured
		}
		if r.Peer != nil {
			switch {
			case r.Peer.Text != "":
				peer = r.Peer.Name + ": " + r.Peer.Text
			default:
				peer = r.Peer.Name + " " + formatValue(r.Peer.Value, r.Unit)
				if r.Peer.Value != 0 && r.NotMeasured == "" {
					ratio = fmt.Sprintf("%.2f", r.Value/r.Peer.Value)
				}
			}
			if r.Peer.Published {
				peer += " (published)"
			}
		}
		result := "—"
		if r.Pass != nil {
			result = "pass"
			if !*r.Pass {
				result = "MISS"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Measure, value, r.Samples, peer, ratio, r.Target.String(r.Unit), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var notes []string
	for _, r := range rep.Rows {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("  %s %s: %s", r.ID, r.Measure, r.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n%s\n", strings.Join(notes, "\n"))
	}
	if len(rep.Errors) > 0 {
		fmt.Fprintf(w, "\nfailed measurements:\n  %s\n", strings.Join(rep.Errors, "\n  "))
	}
	return nil
}

// WriteJSON writes the report to path.
func (rep *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// formatValue prints v with three significant digits and its unit.
func formatValue(v float64, unit string) string {
	s := strconv.FormatFloat(v, 'g', 3, 64)
	if strings.ContainsAny(s, "e") {
		s = strconv.FormatFloat(v, 'f', 0, 64)
	}
	if unit == "%" {
		return s + " %"
	}
	return s + " " + unit
}

// DescribeMachine reads what the report says about the machine.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadStart: LoadAverage()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// LoadAverage is the 1-minute load average, 0 if unknown.
func LoadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// SortRows orders the rows by id: by its number, then by its letters, then
// by the number after a dash (a cluster size), so 10a follows 9 and 5a-256
// follows 5a-64.
func (rep *Report) SortRows() {
	slices.SortStableFunc(rep.Rows, func(a, b Row) int { return compareIDs(a.ID, b.ID) })
}

func compareIDs(a, b string) int {
	split := func(id string) (int, string, int) {
		digits := len(id) - len(strings.TrimLeft(id, "0123456789"))
		n, _ := strconv.Atoi(id[:digits])
		rest, size, _ := strings.Cut(id[digits:], "-")
		m, _ := strconv.Atoi(size)
		return n, rest, m
	}
	na, ra, ma := split(a)
	nb, rb, mb := split(b)
	return cmp.Or(cmp.Compare(na, nb), strings.Compare(ra, rb), cmp.Compare(ma, mb))
}
