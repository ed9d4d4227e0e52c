package netpol

import (
	"errors"
	"reflect"
	"testing"
)

func TestFakeKernel(t *testing.T) {
	var k FakeKernel
	if _, ok := k.Current(); ok {
		t.Fatal("a new fake has a table")
	}
	rs, _ := Compile(scaleInput(10, 2, 2, false))
	if err := k.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if got, ok := k.Current(); !ok || !reflect.DeepEqual(got, rs) || k.Applies() != 1 {
		t.Errorf("after Apply: table %v, %d applies; want the applied ruleset, 1", ok, k.Applies())
	}
	broken := errors.New("no nftables")
	k.FailWith(broken)
	if err := k.Apply(Ruleset{}); !errors.Is(err, broken) {
		t.Errorf("Apply while failing: %v", err)
	}
	if got, _ := k.Current(); !reflect.DeepEqual(got, rs) || k.Applies() != 1 {
		t.Error("a failed Apply changed the ruleset")
	}
	k.FailWith(nil)
	if err := k.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Current(); ok {
		t.Error("Remove left the table")
	}
}
