package bench

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func rowsByID(rows []Row) map[string]Row {
	m := make(map[string]Row)
	for _, r := range rows {
		m[r.ID] = r
	}
	return m
}

// TestMeasureMesh: a small mesh converges and every row holds a figure:
// the wall time, messages and bytes per node until convergence counted at
// the transport, and the steady rate.
func TestMeasureMesh(t *testing.T) {
	rows, err := MeasureMesh(t.Context(), MeshConfig{Nodes: 4, Steady: time.Second, Drain: 100 * time.Millisecond, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	byID := rowsByID(rows)
	for _, id := range []string{"5a", "5b", "5c", "5d"} {
		r, ok := byID[id]
		switch {
		case !ok:
			t.Errorf("no row %s in %+v", id, rows)
		case r.NotMeasured != "":
			t.Errorf("row %s not measured: %s (%s)", id, r.NotMeasured, r.Note)
		}
	}
	if r := byID["5c"]; r.Value < 1 || r.Samples != 4 {
		t.Errorf("5c = %v messages per node over %d nodes; a converged mesh has sent some", r.Value, r.Samples)
	}
	// A message is at least a few bytes, encrypted.
	if c, d := byID["5c"], byID["5d"]; d.Value*1000 < c.Value*10 {
		t.Errorf("5d = %v kB per node for %v messages per node", d.Value, c.Value)
	}
	if r := byID["5b"]; r.Value <= 0 {
		t.Errorf("5b steady rate = %v", r.Value)
	}
	var out strings.Builder
	rep := Report{}
	rep.Add(rows...)
	if err := rep.Print(&out); err != nil {
		t.Fatal(err)
	}
	if got := len(figureRow.FindAllString(out.String(), -1)); got != 4 {
		t.Errorf("the report shows %d of the 4 figures:\n%s", got, out.String())
	}
	t.Logf("\n%s", out.String())
}

// figureRow matches a row of the mesh measurement that shows a figure: a
// number and a unit in the value column, before n.
var figureRow = regexp.MustCompile(`(?m)^5[a-d] .*  [0-9.]+ (s|msgs|kB|kB/s) +[0-9]+ `)

// TestMeasureMeshUnconverged: a mesh that does not converge in time gets
// rows that say so, and no figure for what it could not measure: above all
// no steady-state rate.
func TestMeasureMeshUnconverged(t *testing.T) {
	rows, err := MeasureMesh(t.Context(), MeshConfig{Nodes: 4, Steady: time.Second, Drain: time.Millisecond, Timeout: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	byID := rowsByID(rows)
	for _, id := range []string{"5a", "5b", "5c", "5d"} {
		r := byID[id]
		if r.NotMeasured == "" || r.Value != 0 {
			t.Errorf("row %s of an unconverged mesh: value %v, not measured %q", id, r.Value, r.NotMeasured)
		}
	}
	if r := byID["5a"]; r.Pass == nil || *r.Pass || !strings.Contains(r.Note, "NOT CONVERGED") {
		t.Errorf("5a of an unconverged mesh: pass %v, note %q", deref(r.Pass), r.Note)
	}
	var out strings.Builder
	rep := Report{}
	rep.Add(rows...)
	if err := rep.Print(&out); err != nil {
		t.Fatal(err)
	}
	if figure := figureRow.FindString(out.String()); figure != "" {
		t.Errorf("the report prints a figure for an unconverged mesh: %q\n%s", figure, out.String())
	}
	if !strings.Contains(out.String(), "not measured") {
		t.Errorf("the report does not say the steady rate was not measured:\n%s", out.String())
	}
}
