package hostclock

import (
	"testing"
	"time"
)

func TestNowIsOneClockPerBoot(t *testing.T) {
	a, err := Now()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Now()
	if err != nil {
		t.Fatal(err)
	}
	if a.IsZero() || a.Boot != b.Boot || b.Since < a.Since {
		t.Fatalf("two readings %+v then %+v: want one boot, not going back", a, b)
	}
}

func TestThisBootAgreesWithNow(t *testing.T) {
	clock, err := ThisBoot()
	if err != nil {
		t.Fatal(err)
	}
	a, err := clock()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Now()
	if err != nil {
		t.Fatal(err)
	}
	if a.Boot != b.Boot || b.Since < a.Since {
		t.Fatalf("ThisBoot read %+v, then Now %+v: want one boot, not going back", a, b)
	}
}

func TestReadingsOfTwoBootsAreNotOrdered(t *testing.T) {
	early := Instant{Boot: "b1", Since: time.Second}
	late := early.Add(time.Hour)
	if !early.Before(late) || late.Before(early) {
		t.Fatal("readings of one boot are ordered by Since")
	}
	if d, ok := late.Sub(early); !ok || d != time.Hour {
		t.Fatalf("Sub = %s, %v", d, ok)
	}
	other := Instant{Boot: "b2", Since: 2 * time.Hour}
	if early.Before(other) || other.Before(early) {
		t.Fatal("readings of different boots must not be ordered")
	}
	if _, ok := other.Sub(early); ok {
		t.Fatal("Sub across boots must say so")
	}
	if (Instant{}).Before(late) {
		t.Fatal("no reading is before nothing")
	}
}
