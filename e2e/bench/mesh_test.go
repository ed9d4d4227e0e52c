package bench

import (
	"fmt"
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
	// The steady window is twice raft's longest heartbeat interval (a fifth
	// of the ledger's 10 s heartbeat timeout), so that 5g counts some.
	rows, err := MeasureMesh(t.Context(), MeshConfig{Nodes: 4, Steady: 4 * time.Second, Drain: 100 * time.Millisecond, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	byID := rowsByID(rows)
	for _, id := range []string{"5a-4", "5b-4", "5c-4", "5d-4", "5e-4", "5f-4", "5g-4", "5h-4"} {
		r, ok := byID[id]
		switch {
		case !ok:
			t.Errorf("no row %s in %+v", id, rows)
		case r.NotMeasured != "":
			t.Errorf("row %s not measured: %s (%s)", id, r.NotMeasured, r.Note)
		}
	}
	if r := byID["5c-4"]; r.Value < 1 || r.Samples != 4 {
		t.Errorf("5c = %v messages per node over %d nodes; a converged mesh has sent some", r.Value, r.Samples)
	}
	// A message is at least a few bytes, encrypted.
	if c, d := byID["5c-4"], byID["5d-4"]; d.Value*1000 < c.Value*10 {
		t.Errorf("5d = %v kB per node for %v messages per node", d.Value, c.Value)
	}
	if r := byID["5b-4"]; r.Value <= 0 {
		t.Errorf("5b steady rate = %v", r.Value)
	}
	// The ledger's leader heartbeats its three followers.
	if r := byID["5g-4"]; r.Value <= 0 {
		t.Errorf("5g leader's raft RPCs = %v /s (%s)", r.Value, r.Note)
	}
	if r := byID["5e-4"]; r.Value <= 0 {
		t.Errorf("5e join = %v s (%s)", r.Value, r.Note)
	}
	var out strings.Builder
	rep := Report{}
	rep.Add(rows...)
	if err := rep.Print(&out); err != nil {
		t.Fatal(err)
	}
	if got := len(figureRow.FindAllString(out.String(), -1)); got != 7 {
		t.Errorf("the report shows %d of the 7 figures:\n%s", got, out.String())
	}
	t.Logf("\n%s", out.String())
}

// figureRow matches a row of the mesh measurement, but the wall time,
// that shows a figure: a number and a unit in the value column, before n.
var figureRow = regexp.MustCompile(`(?m)^5[a-g]-[0-9]+ .*  [0-9.]+ (s|msgs|kB|kB/s|msgs/s|/s) +[0-9]+ `)

// TestMeasureMeshUnconverged: a mesh that does not converge in time gets
// rows that say so, and no figure for what it could not measure: above all
// no steady-state rate.
func TestMeasureMeshUnconverged(t *testing.T) {
	rows, err := MeasureMesh(t.Context(), MeshConfig{Nodes: 4, Steady: time.Second, Drain: time.Millisecond, Timeout: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	byID := rowsByID(rows)
	for _, id := range []string{"5a-4", "5b-4", "5c-4", "5d-4"} {
		r := byID[id]
		if r.NotMeasured == "" || r.Value != 0 {
			t.Errorf("row %s of an unconverged mesh: value %v, not measured %q", id, r.Value, r.NotMeasured)
		}
	}
	if r := byID["5a-4"]; r.Pass == nil || *r.Pass || !strings.Contains(r.Note, "NOT CONVERGED") {
		t.Errorf("5a of an unconverged mesh: pass %v, note %q", deref(r.Pass), r.Note)
	}
	var out strings.Builder
	rep := Report{}
	rep.Add(rows...)
	if err := rep.Print(&out); err != nil {
		t.Fatal(err)
	}
	// Only the wall time, which a mesh that did not converge took too.
	if r := byID["5h-4"]; r.NotMeasured != "" || r.Value <= 0 {
		t.Errorf("5h of an unconverged mesh: value %v, not measured %q", r.Value, r.NotMeasured)
	}
	if figure := figureRow.FindString(out.String()); figure != "" {
		t.Errorf("the report prints a figure for an unconverged mesh: %q\n%s", figure, out.String())
	}
	if !strings.Contains(out.String(), "not measured") {
		t.Errorf("the report does not say the steady rate was not measured:\n%s", out.String())
	}
}

// TestParseMeshSizes: the sizes and dilations of -mesh-nodes and
// -mesh-dilation, and the refusals of what they cannot mean.
func TestParseMeshSizes(t *testing.T) {
	for _, tc := range []struct {
		sizes, dilations string
		want             string // "nodes@dilation ..." or the error's start
	}{
		{"64,256,1000", "auto", "64@1 256@4 1000@16"},
		{"10", "auto", "10@1"},
		{"65", "auto", "65@2"},
		{"64, 256", "2", "64@2 256@2"},
		{"64,256", "1,8", "64@1 256@8"},
		{"64,256", "1,2,3", "3 dilations for 2 mesh sizes"},
		{"64,x", "auto", `mesh size "x"`},
		{"0", "auto", `mesh size "0"`},
		{"64", "0.5", `dilation "0.5"`},
		{"64", "fast", `dilation "fast"`},
	} {
		cfgs, err := ParseMeshSizes(tc.sizes, tc.dilations)
		var got []string
		for _, c := range cfgs {
			got = append(got, fmt.Sprintf("%d@%g", c.Nodes, c.Dilation.Factor()))
		}
		if err != nil {
			got = []string{err.Error()}
		}
		if g := strings.Join(got, " "); !strings.HasPrefix(g, tc.want) {
			t.Errorf("ParseMeshSizes(%q, %q) = %s, want %s", tc.sizes, tc.dilations, g, tc.want)
		}
	}
}
