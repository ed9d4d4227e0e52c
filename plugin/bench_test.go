package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/netpol/admit"
)

// BenchmarkAddDel measures ADD and DEL through libcni, as a runtime calls
// them, for grapevine-cni with grapevine-ipam beside ptp with host-local
// (containernetworking/plugins v1.10.0), alternating them on every iteration
// so all see the same machine load. A third candidate runs grapevine-ipam as
// a separate executable (standard delegation, through a link under another
// name) to show what the in-process IPAM saves. Each iteration is one pod of
// each; run at least 200:
//
//	go test ./plugin -run '^$' -bench AddDel -benchtime 200x
func BenchmarkAddDel(b *testing.B) {
	l := newLab(b)
	// grapevine-cni calls grapevine-ipam in-process only under that type
	// name; under any other it executes it like any IPAM plugin.
	execDir := b.TempDir()
	if err := os.Symlink(filepath.Join(cniBinDir, ipam.Type), filepath.Join(execDir, "gv-ipam-exec")); err != nil {
		b.Fatal(err)
	}
	l.cni = newCNIConfig([]string{cniBinDir, execDir}, l.cacheDir)
	candidates := []struct {
		name string
		list *libcni.NetworkConfigList
	}{
		{"grapevine", l.conflistIPAM(`{"type": "grapevine-ipam", "dataDir": "` + l.dataDir + `"}`)},
		{"grapevine-exec", l.conflistIPAM(`{"type": "gv-ipam-exec", "dataDir": "` + l.dataDir + `"}`)},
		{"ptp", mustConfList(b, `{"cniVersion": "1.1.0", "name": "ptp-bench", "plugins": [
		  {"type": "ptp", "mtu": 1450, "ipam": {"type": "host-local", "dataDir": "`+l.dataDir+`",
		   "ranges": [[{"subnet": "10.245.0.0/16"}]]}}]}`)},
	}
	pods := []*pod{l.newPod("bench-a"), l.newPod("bench-b"), l.newPod("bench-c")}
	adds := make([][]time.Duration, len(candidates))
	dels := make([][]time.Duration, len(candidates))
	ctx := context.Background()

	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for c, cand := range candidates {
			p := pods[c]
			p.rt.ContainerID = fmt.Sprintf("bench-%s-%d", cand.name, i)
			err := l.inHost(func() error {
				start := time.Now()
				if _, err := l.cni.AddNetworkList(ctx, cand.list, p.rt); err != nil {
					return fmt.Errorf("%s ADD: %w", cand.name, err)
				}
				added := time.Now()
				if err := l.cni.DelNetworkList(ctx, cand.list, p.rt); err != nil {
					return fmt.Errorf("%s DEL: %w", cand.name, err)
				}
				adds[c] = append(adds[c], added.Sub(start))
				dels[c] = append(dels[c], time.Since(added))
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()

	p50 := make([]float64, len(candidates))
	for c, cand := range candidates {
		total := make([]time.Duration, len(adds[c]))
		for i := range total {
			total[i] = adds[c][i] + dels[c][i]
		}
		p50[c] = ms(percentile(total, 50))
		b.ReportMetric(ms(percentile(adds[c], 50)), cand.name+"-add-p50-ms")
		b.ReportMetric(ms(percentile(dels[c], 50)), cand.name+"-del-p50-ms")
		b.ReportMetric(p50[c], cand.name+"-adddel-p50-ms")
		b.ReportMetric(ms(percentile(total, 99)), cand.name+"-adddel-p99-ms")
	}
	b.ReportMetric(p50[0]/p50[len(p50)-1], "p50-ratio-vs-ptp")
}

func mustConfList(b testing.TB, conf string) *libcni.NetworkConfigList {
	b.Helper()
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		b.Fatal(err)
	}
	return list
}

// percentile is the nearest-rank percentile of d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := (p*len(s)+99)/100 - 1
	return s[max(rank, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkAddDelDualStack measures ADD and DEL of a dual-stack pod beside
// an IPv4-only one (grapevine-cni with grapevine-ipam in-process, one node
// with an IPv6 block in node.json and one without) and ptp with host-local
// handing out both families, alternating them like BenchmarkAddDel. ptp
// waits for duplicate address detection on the pod's IPv6 address (about
// 1.8 s an ADD here), which grapevine-cni skips (nodad), so a few dozen
// iterations take minutes:
//
//	go test ./plugin -run '^$' -bench AddDelDualStack -benchtime 50x
func BenchmarkAddDelDualStack(b *testing.B) {
	l := newLab(b)
	v4RunDir := l.runDir
	l.runDir = filepath.Join(b.TempDir(), "run6")
	l.writeDualStackState("10.244.1.0/24", labBlock6, 1450)
	dualList := l.conflistIPAM(`{"type": "grapevine-ipam", "dataDir": "` + l.dataDir + `"}`)
	l.runDir = v4RunDir
	candidates := []struct {
		name string
		list *libcni.NetworkConfigList
	}{
		{"grapevine-ipv4", l.conflistIPAM(`{"type": "grapevine-ipam", "dataDir": "` + l.dataDir + `"}`)},
		{"grapevine-dual", dualList},
		{"ptp-dual", mustConfList(b, `{"cniVersion": "1.1.0", "name": "ptp-bench", "plugins": [
		  {"type": "ptp", "mtu": 1450, "ipam": {"type": "host-local", "dataDir": "`+l.dataDir+`",
		   "ranges": [[{"subnet": "10.245.0.0/16"}], [{"subnet": "fd00:245::/64"}]]}}]}`)},
	}
	pods := []*pod{l.newPod("bench-a"), l.newPod("bench-b"), l.newPod("bench-c")}
	adds := make([][]time.Duration, len(candidates))
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for c, cand := range candidates {
			p := pods[c]
			p.rt.ContainerID = fmt.Sprintf("bench-%s-%d", cand.name, i)
			err := l.inHost(func() error {
				start := time.Now()
				if _, err := l.cni.AddNetworkList(ctx, cand.list, p.rt); err != nil {
					return fmt.Errorf("%s ADD: %w", cand.name, err)
				}
				adds[c] = append(adds[c], time.Since(start))
				return l.cni.DelNetworkList(ctx, cand.list, p.rt)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	p50 := make([]float64, len(candidates))
	for c, cand := range candidates {
		p50[c] = ms(percentile(adds[c], 50))
		b.ReportMetric(p50[c], cand.name+"-add-p50-ms")
	}
	b.ReportMetric(p50[1]/p50[0], "dual-vs-ipv4-add-p50-ratio")
	b.ReportMetric(p50[1]/p50[2], "dual-vs-ptp-dual-add-p50-ratio")
}

// BenchmarkAddWithPolicyAgent measures what announcing the pod to the
// agent adds to ADD while network policy is enforced: the same ADD with
// node.json naming no policy socket and naming one whose agent answers at
// once, alternating on every iteration. The agent's own work (compiling and
// applying the table) is netpol's BenchmarkCompileApply.
//
//	go test ./plugin -run '^$' -bench AddWithPolicyAgent -benchtime 200x
func BenchmarkAddWithPolicyAgent(b *testing.B) {
	l := newLab(b)
	list := l.conflist("1.1.0")
	socket := filepath.Join(b.TempDir(), "policy.sock")
	fakeAgent(b, socket, func(context.Context, admit.Request) error { return nil })
	p := l.newPod("bench")
	candidates := []string{"", socket}
	adds := make([][]time.Duration, len(candidates))
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		for c, sock := range candidates {
			b.StopTimer()
			l.withPolicySocket(sock)
			p.rt.ContainerID = fmt.Sprintf("bench-%d-%d", c, i)
			b.StartTimer()
			err := l.inHost(func() error {
				start := time.Now()
				if _, err := l.cni.AddNetworkList(ctx, list, p.rt); err != nil {
					return fmt.Errorf("ADD: %w", err)
				}
				adds[c] = append(adds[c], time.Since(start))
				return l.cni.DelNetworkList(ctx, list, p.rt)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(ms(percentile(adds[0], 50)), "add-p50-ms")
	b.ReportMetric(ms(percentile(adds[1], 50)), "add-policy-p50-ms")
	b.ReportMetric(ms(percentile(adds[1], 50))-ms(percentile(adds[0], 50)), "policy-extra-p50-ms")
}
