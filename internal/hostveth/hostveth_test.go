package hostveth

import (
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseAliasInvertsAlias(t *testing.T) {
	alias := Alias("grapevine", "c0ffee", "eth0")
	if id, ifName, ok := ParseAlias("grapevine", alias); !ok || id != "c0ffee" || ifName != "eth0" {
		t.Errorf("ParseAlias(%q) = %q, %q, %v", alias, id, ifName, ok)
	}
	for _, bad := range []string{"", "grapevine", "grapevine/", "grapevine/c0ffee", "grapevine/c0ffee/", "grapevine//eth0", "other/c0ffee/eth0", "grapevine2/c0ffee/eth0"} {
		if id, ifName, ok := ParseAlias("grapevine", bad); ok {
			t.Errorf("ParseAlias(%q) = %q, %q; want no attachment", bad, id, ifName)
		}
	}
}

func TestAttachments(t *testing.T) {
	has := Attachments("grapevine", []string{"grapevine/aaa/eth0", "grapevine/bbb/net1", "other/ccc/eth0", "grapevine/ddd"})
	for _, tt := range []struct {
		att  types.GCAttachment
		want bool
	}{
		{types.GCAttachment{ContainerID: "aaa", IfName: "eth0"}, true},
		{types.GCAttachment{ContainerID: "aaa", IfName: "eth1"}, false},
		{types.GCAttachment{ContainerID: "bbb"}, true}, // legacy: any interface
		{types.GCAttachment{ContainerID: "ccc", IfName: "eth0"}, false},
		{types.GCAttachment{ContainerID: "ddd"}, false},
		{types.GCAttachment{}, false},
	} {
		if got := has(tt.att); got != tt.want {
			t.Errorf("%+v: %v, want %v", tt.att, got, tt.want)
		}
	}
}
