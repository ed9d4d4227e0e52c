package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
	"github.com/grapevine-net/grapevine/ipam"
)

// cmdGC frees the address of every attachment the runtime no longer lists
// and removes the host veths such attachments left behind. Like the spec
// asks, it carries on past errors and reports them all at the end. Without
// cni.dev/valid-attachments it is refused (CNI error 7) before touching
// anything: every pod would count as gone.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := ipam.RequireValidAttachments(args.StdinData); err != nil {
		return err
	}
	valid := make(map[string]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[attachment{ContainerID: a.ContainerID, IfName: a.IfName}.alias(conf.Name)] = true
	}
	var errs []error
	if err := newAddressSource(conf, args).gc(context.Background(), conf.ValidAttachments); err != nil {
		errs = append(errs, err)
	}
	links, err := netlinkdump.Retry(netlink.LinkList)
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, link := range links {
		attrs := link.Attrs()
		ours := isHostVeth(link) && strings.HasPrefix(attrs.Alias, conf.Name+"/")
		if !ours || valid[attrs.Alias] {
			continue
		}
		if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stale host veth %s (%s): %w", attrs.Name, attrs.Alias, err))
		}
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrInternal, errors.Join(errs...).Error(), "")
	}
	return nil
}
