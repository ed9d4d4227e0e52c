package netpol

import (
	"net/netip"
	"slices"
)

// prefixRange is the range of addresses in p (IPv4 or IPv6).
func prefixRange(p netip.Prefix) AddrRange {
	p = p.Masked()
	first := p.Addr()
	b := first.As16()
	host := first.BitLen() - p.Bits()
	for i := range host {
		b[15-i/8] |= 1 << (i % 8)
	}
	last := netip.AddrFrom16(b)
	if first.Is4() {
		last = last.Unmap()
	}
	return AddrRange{First: first, Last: last}
}

// normalize sorts rs and merges overlapping and adjacent ranges. IPv4
// ranges sort before IPv6 ones and never merge with them.
func normalize(rs []AddrRange) []AddrRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b AddrRange) int { return a.First.Compare(b.First) })
	out := []AddrRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		next := last.Last.Next()
		if r.First.BitLen() != last.First.BitLen() || (next.IsValid() && r.First.Compare(next) > 0) {
			out = append(out, r)
			continue
		}
		if r.Last.Compare(last.Last) > 0 {
			last.Last = r.Last
		}
	}
	return out
}

// subtract returns rs without the addresses of cut; both normalized.
func subtract(rs, cut []AddrRange) []AddrRange {
	var out []AddrRange
	for _, r := range rs {
		pieces := []AddrRange{r}
		for _, c := range cut {
			var next []AddrRange
			for _, p := range pieces {
				if c.Last.Less(p.First) || p.Last.Less(c.First) {
					next = append(next, p)
					continue
				}
				if p.First.Less(c.First) {
					next = append(next, AddrRange{First: p.First, Last: c.First.Prev()})
				}
				if c.Last.Less(p.Last) {
					next = append(next, AddrRange{First: c.Last.Next(), Last: p.Last})
				}
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	return out
}

// rangesKey identifies a normalized list of ranges, so that rules with the
// same peers share one set. Each range starts with its family's bit length,
// so an IPv4 range never reads as part of an IPv6 one.
func rangesKey(rs []AddrRange) string {
	b := make([]byte, 0, 9*len(rs))
	for _, r := range rs {
		b = append(b, byte(r.First.BitLen()/8))
		b = append(append(b, r.First.AsSlice()...), r.Last.AsSlice()...)
	}
	return string(b)
}

// ofFamily returns the ranges of rs in the family of IPv4 (v6 false) or
// IPv6 (v6 true); rs normalized.
func ofFamily(rs []AddrRange, v6 bool) []AddrRange {
	var out []AddrRange
	for _, r := range rs {
		if r.First.Is6() == v6 {
			out = append(out, r)
		}
	}
	return out
}
