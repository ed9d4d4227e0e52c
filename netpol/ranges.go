package netpol

import (
	"net/netip"
	"slices"
)

// prefixRange is the range of addresses in p (IPv4).
func prefixRange(p netip.Prefix) AddrRange {
	p = p.Masked()
	first := p.Addr()
	b := first.As4()
	host := 32 - p.Bits()
	for i := range host {
		b[3-i/8] |= 1 << (i % 8)
	}
	return AddrRange{First: first, Last: netip.AddrFrom4(b)}
}

// normalize sorts rs and merges overlapping and adjacent ranges.
func normalize(rs []AddrRange) []AddrRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b AddrRange) int { return a.First.Compare(b.First) })
	out := []AddrRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if next := last.Last.Next(); next.IsValid() && r.First.Compare(next) > 0 {
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

// rangesKey identifies a normalized list of IPv4 ranges, so that rules with the
// same peers share one set.
func rangesKey(rs []AddrRange) string {
	b := make([]byte, 0, 8*len(rs))
	for _, r := range rs {
		first, last := r.First.As4(), r.Last.As4()
		b = append(append(b, first[:]...), last[:]...)
	}
	return string(b)
}
