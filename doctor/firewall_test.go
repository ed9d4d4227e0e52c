package doctor

import (
	"slices"
	"strconv"
	"testing"
)

var grapevinePorts = []portProto{{"tcp", 7962, "gossip"}, {"udp", 7962, "gossip"}, {"tcp", 7963, "ledger"}, {"udp", 4789, "VXLAN"}}

const (
	publicZone = `<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <service name="ssh"/>
  <service name="dhcpv6-client"/>
  <forward/>
</zone>`
	sshService   = `<service><short>SSH</short><port protocol="tcp" port="22"/></service>`
	vxlanService = `<service><short>VXLAN</short><port protocol="udp" port="4789"/></service>`
)

func TestFirewalldBlocked(t *testing.T) {
	services := map[string]string{"ssh": sshService, "vxlan": vxlanService}
	zone := func(body string) string { return `<zone target="default">` + body + `</zone>` }
	tests := []struct {
		name    string
		conf    string
		zones   map[string]string
		zone    string
		blocked []int // ports, in grapevinePorts' order
		unsure  bool
		wantErr bool
	}{
		{name: "default public zone opens ssh only: all blocked", zones: map[string]string{"public": publicZone},
			zone: "public", blocked: []int{7962, 7962, 7963, 4789}},
		{name: "DefaultZone from firewalld.conf", conf: "# comment\nDefaultZone=internal\n",
			zones: map[string]string{"public": publicZone, "internal": zone(`<port protocol="tcp" port="7962-7963"/><port protocol="udp" port="7962"/><service name="vxlan"/>`)},
			zone:  "internal"},
		{name: "the interface's zone, not the default", zones: map[string]string{"public": publicZone, "lan": zone(`<interface name="em1"/><port protocol="tcp" port="7962"/>`)},
			zone: "lan", blocked: []int{7962, 7963, 4789}},
		{name: "target ACCEPT opens everything", zones: map[string]string{"public": publicZone, "trusted": `<zone target="ACCEPT"><interface name="em1"/></zone>`},
			zone: "trusted"},
		{name: "rich rules: unsure", zones: map[string]string{"public": zone(`<rule family="ipv4"><source address="10.0.0.0/8"/><accept/></rule>`)},
			zone: "public", blocked: []int{7962, 7962, 7963, 4789}, unsure: true},
		{name: "a zone bound to source addresses: unsure", zones: map[string]string{"public": publicZone, "peers": `<zone target="ACCEPT"><source address="172.16.254.0/24"/></zone>`},
			zone: "public", blocked: []int{7962, 7962, 7963, 4789}, unsure: true},
		{name: "default zone without a file", conf: "DefaultZone=gone\n", zones: map[string]string{"public": publicZone}, zone: "gone", wantErr: true},
		{name: "broken XML", zones: map[string]string{"public": "<zone"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := HostFirewall{FirewalldActive: true, FirewalldConf: tt.conf, FirewalldZones: tt.zones, FirewalldServices: services}
			zone, blocked, unsure, err := firewalldBlocked(fw, "em1", grapevinePorts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			var ports []int
			for _, p := range blocked {
				ports = append(ports, p.Port)
			}
			if zone != tt.zone || !slices.Equal(ports, tt.blocked) || (unsure != "") != tt.unsure {
				t.Errorf("zone %q, blocked %v, unsure %q; want %q, %v, unsure %v", zone, ports, unsure, tt.zone, tt.blocked, tt.unsure)
			}
		})
	}
}

func TestUFWBlocked(t *testing.T) {
	const enabled, dropIn = "ENABLED=yes\nLOGLEVEL=low\n", `DEFAULT_INPUT_POLICY="DROP"` + "\n"
	tests := []struct {
		name           string
		conf, defaults string
		rules          string
		wantEnabled    bool
		blocked        []string
	}{
		{name: "disabled", conf: "ENABLED=no\n", defaults: dropIn},
		{name: "input policy ACCEPT", conf: enabled, defaults: `DEFAULT_INPUT_POLICY="ACCEPT"`, wantEnabled: true},
		{name: "only ssh allowed", conf: enabled, defaults: dropIn, wantEnabled: true,
			rules:   "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n-A ufw-user-input -p tcp --dport 22 -j ACCEPT\n",
			blocked: []string{"tcp/7962", "udp/7962", "tcp/7963", "udp/4789"}},
		{name: "all allowed, a range, any protocol, on the interface", conf: enabled, defaults: dropIn, wantEnabled: true,
			rules: "### tuple ### allow any 7962 0.0.0.0/0 any 0.0.0.0/0 in\n" +
				"### tuple ### limit tcp 7963:7970 0.0.0.0/0 any 172.16.254.0/24 in\n" +
				"### tuple ### allow udp 4789 0.0.0.0/0 any 0.0.0.0/0 in_em1\n"},
		{name: "on another interface, outgoing, or denied: blocked", conf: enabled, defaults: dropIn, wantEnabled: true,
			rules: "### tuple ### allow any 7962 0.0.0.0/0 any 0.0.0.0/0 in_eth9\n" +
				"### tuple ### allow tcp 7963 0.0.0.0/0 any 0.0.0.0/0 out\n" +
				"### tuple ### deny udp 4789 0.0.0.0/0 any 0.0.0.0/0 in\n" +
				"### tuple ### allow udp 7962,4789 0.0.0.0/0 any 0.0.0.0/0 in\n",
			blocked: []string{"tcp/7962", "tcp/7963"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := HostFirewall{UFWActive: true, UFWConf: tt.conf, UFWDefaults: tt.defaults, UFWUserRules: tt.rules}
			en, blocked := ufwBlocked(fw, "em1", grapevinePorts)
			var got []string
			for _, p := range blocked {
				got = append(got, p.Proto+"/"+itoa(p.Port))
			}
			if en != tt.wantEnabled || !slices.Equal(got, tt.blocked) {
				t.Errorf("enabled %v, blocked %v; want %v, %v", en, got, tt.wantEnabled, tt.blocked)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
