package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Pod is a namespace wired by CNI on one host.
type Pod struct {
	Namespace
	Host        *Host
	Name        string // "p1"
	ContainerID string
	IP          netip.Addr
	// IP6 is the pod's IPv6 address on a dual-stack host, and its only
	// address (IP too) on an IPv6-only host; zero otherwise.
	IP6 netip.Addr
	// Result is what the plugin chain returned for ADD.
	Result *current.Result

	conf *libcni.NetworkConfigList
}

// AddPod creates a pod namespace and runs CNI ADD for it with the conflist
// the agent wrote on this host.
func (h *Host) AddPod(ctx context.Context) (*Pod, error) {
	return h.AddPodWithConf(ctx, h.ConfListPath())
}

// AddPodWithConf is AddPod with another conflist.
func (h *Host) AddPodWithConf(ctx context.Context, confList string) (_ *Pod, err error) {
	conf, err := libcni.ConfListFromFile(confList)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	h.mu.Lock()
	h.pods++
	name := "p" + strconv.Itoa(h.pods)
	h.mu.Unlock()
	p := &Pod{
		Namespace:   Namespace{Name: h.Namespace.Name + "-" + name},
		Host:        h,
		Name:        name,
		ContainerID: h.lab.ID + "-" + h.Name + "-" + name,
		conf:        conf,
	}
	if err := p.create(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			Run(context.WithoutCancel(ctx), "ip", "netns", "delete", p.Namespace.Name)
		}
	}()
	var res types.Result
	err = h.cni(func(c *libcni.CNIConfig) (err error) {
		res, err = c.AddNetworkList(ctx, conf, p.runtimeConf())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: %w", p.Name, h.Name, err)
	}
	if p.Result, err = current.NewResultFromResult(res); err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: result: %w", p.Name, h.Name, err)
	}
	if len(p.Result.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD %s on %s: result has no address", p.Name, h.Name)
	}
	ip, ok := netip.AddrFromSlice(p.Result.IPs[0].Address.IP)
	if !ok {
		return nil, fmt.Errorf("CNI ADD %s on %s: bad address %v", p.Name, h.Name, p.Result.IPs[0].Address.IP)
	}
	p.IP = ip.Unmap()
	if p.IP.Is6() {
		p.IP6 = p.IP
	}
	for _, ipc := range p.Result.IPs[1:] {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && !a.Unmap().Is4() {
			p.IP6 = a
			break
		}
	}
	return p, nil
}

// Check runs CNI CHECK for the pod.
func (p *Pod) Check(ctx context.Context) error {
	err := p.Host.cni(func(c *libcni.CNIConfig) error {
		return c.CheckNetworkList(ctx, p.conf, p.runtimeConf())
	})
	if err != nil {
		return fmt.Errorf("CNI CHECK %s on %s: %w", p.Name, p.Host.Name, err)
	}
	return nil
}

// Delete runs CNI DEL for the pod and removes its namespace.
func (p *Pod) Delete(ctx context.Context) error {
	err := p.Host.cni(func(c *libcni.CNIConfig) error {
		return c.DelNetworkList(ctx, p.conf, p.runtimeConf())
	})
	if err != nil {
		err = fmt.Errorf("CNI DEL %s on %s: %w", p.Name, p.Host.Name, err)
	}
	_, nsErr := Run(ctx, "ip", "netns", "delete", p.Namespace.Name)
	return errors.Join(err, nsErr)
}

func (p *Pod) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.Path(),
		IfName:      "eth0",
		// What kubelet passes; IgnoreUnknown lets plugins without
		// Kubernetes arguments (ptp) accept them.
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "lab"},
			{"K8S_POD_NAME", p.Host.Name + "-" + p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
}

// cni runs f with a libcni client from inside the host's namespace: the
// plugins it executes inherit the calling thread's namespace, exactly as
// when a container runtime on that host runs them.
func (h *Host) cni(f func(*libcni.CNIConfig) error) error {
	c := libcni.NewCNIConfigWithCacheDir(h.lab.CNIPath, h.cniCacheDir(), nil)
	return h.Namespace.Do(func() error { return f(c) })
}

// HostVeth names the host side of the pod's eth0 in its host's namespace:
// the link eth0's peer index points at.
func (p *Pod) HostVeth() (string, error) {
	eth0, err := p.LinkByName("eth0")
	if err != nil {
		return "", err
	}
	veth, err := p.Host.LinkByIndex(eth0.Attrs().ParentIndex)
	if err != nil {
		return "", fmt.Errorf("host side of %s's eth0: %w", p.Name, err)
	}
	return veth.Attrs().Name, nil
}
