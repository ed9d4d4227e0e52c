package node

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
)

// The agent writes its rules into iptables-nft's chain "ip filter FORWARD"
// over nftables netlink, with no iptables binary (the agent's image has
// none). A rule there must be in the encoding iptables-nft reads back, or
// `iptables -S` calls the table incompatible and Docker's rewrites of the
// chain break on it. nftForwardRule therefore builds the expressions
// iptables-nft 1.8.9 writes for `-s|-d <prefix> -j ACCEPT` (a prefix of
// whole bytes as a shorter payload load and a compare; any other as a
// 4-byte load, a mask and a compare; then a counter and an immediate
// accept), and puts the comment into the rule's UserData as
// NFTNL_UDATA_RULE_COMMENT, which iptables-nft lists as
// `-m comment --comment` (it writes a comment match of xtables itself,
// which would need the kernel's xt_comment through nft_compat).
// TestForwardRulesReadByIptablesNFT checks both against the binary in a
// test namespace.

// Offsets of the source and destination address in the IPv4 header.
const (
	ipv4SaddrOffset = 12
	ipv4DaddrOffset = 16
)

// nftForwardRule is the expressions and UserData of a rule accepting what
// spec (one of ForwardAcceptSpecs) matches.
func nftForwardRule(spec []string) ([]expr.Any, []byte, error) {
	if len(spec) != 8 || spec[2] != "-m" || spec[3] != "comment" || spec[4] != "--comment" || spec[6] != "-j" || spec[7] != "ACCEPT" {
		return nil, nil, fmt.Errorf("forward: rule %q is not -s|-d <prefix> -m comment --comment <comment> -j ACCEPT", strings.Join(spec, " "))
	}
	var offset uint32
	switch spec[0] {
	case "-s":
		offset = ipv4SaddrOffset
	case "-d":
		offset = ipv4DaddrOffset
	default:
		return nil, nil, fmt.Errorf("forward: rule %q matches neither -s nor -d", strings.Join(spec, " "))
	}
	p, err := netip.ParsePrefix(spec[1])
	if err != nil || !p.Addr().Is4() || p.Masked() != p || p.Bits() == 0 {
		return nil, nil, fmt.Errorf("forward: rule %q: %s is not an IPv4 network of at least one bit", strings.Join(spec, " "), spec[1])
	}
	addr := p.Addr().As4()
	var exprs []expr.Any
	if p.Bits()%8 == 0 {
		n := uint32(p.Bits() / 8)
		exprs = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:n]},
		}
	} else {
		var mask [4]byte
		for i := range p.Bits() {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		exprs = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		}
	}
	exprs = append(exprs, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	return exprs, userdata.AppendString(nil, userdata.TypeComment, spec[5]), nil
}

// nftForwardSpec reads a rule of iptables-nft's FORWARD chain back as
// iptables -S prints it after "-A FORWARD": ours reports whether its
// comment is one of the agent's, in UserData as nftForwardRule writes it
// or in the comment match iptables-nft writes (a rule of ours put back by
// hand). A rule of ours in another shape (changed by hand) is read as its
// comment alone, so that it equals no desired rule and is replaced.
func nftForwardSpec(exprs []expr.Any, udata []byte) (spec []string, ours bool) {
	comment, ok := userdata.GetString(udata, userdata.TypeComment)
	var rest []expr.Any
	for _, e := range exprs {
		if m, isMatch := e.(*expr.Match); isMatch && m.Name == "comment" && !ok {
			if info, isBytes := m.Info.(*xt.Unknown); isBytes {
				comment, ok = string(bytes.TrimRight(*info, "\x00")), true
				continue
			}
		}
		rest = append(rest, e)
	}
	if !ok || !strings.HasPrefix(comment, forwardCommentPrefix) {
		return nil, false
	}
	odd := []string{"-m", "comment", "--comment", comment}
	match, rest, ok := nftAddrMatch(rest)
	if !ok || len(rest) != 2 {
		return odd, true
	}
	if _, ok := rest[0].(*expr.Counter); !ok {
		return odd, true
	}
	if v, ok := rest[1].(*expr.Verdict); !ok || v.Kind != expr.VerdictAccept {
		return odd, true
	}
	return append(match, "-m", "comment", "--comment", comment, "-j", "ACCEPT"), true
}

// nftAddrMatch reads a leading match of the source or destination address
// against a prefix, in either of nftForwardRule's shapes, as its iptables
// arguments, and returns the expressions after it.
func nftAddrMatch(exprs []expr.Any) (match []string, rest []expr.Any, ok bool) {
	if len(exprs) < 2 {
		return nil, nil, false
	}
	pl, isPayload := exprs[0].(*expr.Payload)
	if !isPayload || pl.Base != expr.PayloadBaseNetworkHeader || pl.DestRegister != 1 || pl.Len == 0 || pl.Len > 4 {
		return nil, nil, false
	}
	flag := ""
	switch pl.Offset {
	case ipv4SaddrOffset:
		flag = "-s"
	case ipv4DaddrOffset:
		flag = "-d"
	default:
		return nil, nil, false
	}
	bits := int(pl.Len) * 8
	next := exprs[1:]
	if bw, isBitwise := next[0].(*expr.Bitwise); isBitwise {
		if pl.Len != 4 || bw.Len != 4 || len(bw.Mask) != 4 || !bytes.Equal(bw.Xor, make([]byte, 4)) {
			return nil, nil, false
		}
		var total int
		// Size is 0, 0 for a mask that is not contiguous.
		if bits, total = net.IPMask(bw.Mask).Size(); total != 32 {
			return nil, nil, false
		}
		next = next[1:]
	}
	if len(next) == 0 {
		return nil, nil, false
	}
	cmp, isCmp := next[0].(*expr.Cmp)
	if !isCmp || cmp.Op != expr.CmpOpEq || cmp.Register != 1 || len(cmp.Data) != int(pl.Len) {
		return nil, nil, false
	}
	var a [4]byte
	copy(a[:], cmp.Data)
	p := netip.PrefixFrom(netip.AddrFrom4(a), bits)
	if p.Masked() != p {
		return nil, nil, false
	}
	return []string{flag, p.String()}, next[1:], true
}
