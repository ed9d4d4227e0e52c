package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// Defaults for zero Config fields.
const (
	DefaultPort              = 7962
	DefaultLedgerPort        = 7963
	DefaultVoters            = 3
	DefaultBlockBits         = 23
	DefaultLease             = ledger.DefaultLease
	DefaultReconnectInterval = 30 * time.Second
	DefaultLeaveTimeout      = 3 * time.Second
)

// DefaultPool is the pod address pool used when Config.Pool is zero.
var DefaultPool = netip.MustParsePrefix("10.244.0.0/16")

// Limits of a pool's division into blocks.
const (
	// MaxBlockBits is the longest block prefix: a /30 leaves two pod
	// addresses once IPAM skips the network and broadcast addresses.
	MaxBlockBits = 30
	// MaxBlockCountBits bounds the number of blocks to 2^20, which keeps
	// the ledger's search for a free block small.
	MaxBlockCountBits = 20
)

// CheckNodeName accepts a name of 1-253 printable characters without spaces:
// what a host name can be.
func CheckNodeName(name string) error {
	switch {
	case name == "" || len(name) > maxNameLen:
		return fmt.Errorf("node name %q must be 1-%d characters", name, maxNameLen)
	case !validName(name):
		return fmt.Errorf("node name %q has spaces or non-printable characters; use a host name", name)
	}
	return nil
}

// CheckPort accepts a TCP/UDP port number.
func CheckPort(port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d is out of range 1-65535", port)
	}
	return nil
}

// CheckPool accepts a network address that can be cut into blocks of
// prefix length blockBits: from the pool's own length to MaxBlockBits
// (MaxBlockBits6 for an IPv6 pool, an IPv6-only cluster), and at most
// 2^MaxBlockCountBits of them.
func CheckPool(pool netip.Prefix, blockBits int) error {
	maxBits := MaxBlockBits
	if pool.Addr().Is6() {
		maxBits = MaxBlockBits6
	}
	switch {
	case !pool.IsValid() || pool.Addr().Is4In6() || pool.Addr().Zone() != "":
		return fmt.Errorf("pool %s is not an IPv4 or IPv6 network", pool)
	case pool.Masked() != pool:
		return fmt.Errorf("pool %s is not a network address (did you mean %s?)", pool, pool.Masked())
	case blockBits < pool.Bits() || blockBits > maxBits:
		return fmt.Errorf("block size /%d must be between the pool's prefix length /%d and /%d", blockBits, pool.Bits(), maxBits)
	case blockBits-pool.Bits() > MaxBlockCountBits:
		return fmt.Errorf("block size /%d cuts pool %s into more than 2^%d blocks; use a longer pool prefix or a shorter block size",
			blockBits, pool, MaxBlockCountBits)
	}
	return nil
}

// DefaultBlockBitsFor is the block size of pool unless told otherwise:
// DefaultBlockBits for an IPv4 pool. For an IPv6 pool (an IPv6-only
// cluster) a /64 per host, the usual IPv6 subnet, when the pool is a /56
// or shorter (256 blocks or more); a longer, small pool gets /120 blocks
// (255 pods each). Either is shortened to keep at most
// 2^MaxBlockCountBits blocks (a /44 pool gets /64s, a /40 gets /60s).
func DefaultBlockBitsFor(pool netip.Prefix) int {
	switch {
	case !pool.Addr().Is6():
		return DefaultBlockBits
	case pool.Bits() <= 56:
		return min(DefaultBlockBits6, pool.Bits()+MaxBlockCountBits)
	default:
		return min(MaxBlockBits6, pool.Bits()+MaxBlockCountBits)
	}
}

// CheckVoters accepts the number of ledger voters: 1, 3 or 5.
func CheckVoters(n int) error {
	switch n {
	case 1, 3, 5:
		return nil
	}
	return fmt.Errorf("%d voters: want 1, 3 or 5 (an odd number survives as many failures as the next even one)", n)
}

// MaxBootstrapExpect is the most founders a ledger can start with: they are
// its first voters, and a ledger has at most 5.
const MaxBootstrapExpect = 5

// CheckBootstrapExpect accepts 0 (off) or a number of founders from 1 to
// the number of voters: every founder starts as a voter.
func CheckBootstrapExpect(n, voters int) error {
	if n < 0 || n > MaxBootstrapExpect || n > voters {
		return fmt.Errorf("%d founders: want 0 (off) to %d, at most the number of voters (%d); every founder starts as a voter", n, min(voters, MaxBootstrapExpect), voters)
	}
	return nil
}

// CheckLedgerPort accepts a port for the ledger other than the gossip port.
func CheckLedgerPort(port, gossipPort int) error {
	if err := CheckPort(port); err != nil {
		return err
	}
	if port == gossipPort {
		return fmt.Errorf("ledger port %d is the gossip port", port)
	}
	return nil
}

// CheckSecretKey accepts no key (gossip unencrypted) or an AES key of 16, 24
// or 32 bytes.
func CheckSecretKey(key []byte) error {
	switch len(key) {
	case 0, 16, 24, 32:
		return nil
	}
	return fmt.Errorf("gossip key is %d bytes, want 16, 24 or 32", len(key))
}

// CheckLease accepts zero (the default) or a lease of a second or more
// (less could not be renewed across one slow round trip to the leader).
func CheckLease(d time.Duration) error {
	if d != 0 && d < time.Second {
		return fmt.Errorf("lease %s is shorter than a second", d)
	}
	return nil
}

// Config configures a Mesh. NodeName and AdvertiseAddr are required; zero
// values of the other fields select the defaults above.
type Config struct {
	// NodeName identifies this node in the cluster; it must be unique.
	NodeName string
	// AdvertiseAddr is the gossip address peers use to reach this node and
	// the host IP they route its block to.
	AdvertiseAddr netip.Addr
	// AdvertiseAddr6 is this host's IPv6 address on the same interface,
	// advertised as the next hop for its IPv6 block (zero: none).
	AdvertiseAddr6 netip.Addr
	// BindAddr is where the gossip and ledger sockets listen (zero: all
	// addresses of AdvertiseAddr's family).
	BindAddr netip.Addr
	// Port is the gossip port (UDP and TCP).
	Port int
	// LedgerPort is the TCP port of the block ledger (raft and its RPCs),
	// on AdvertiseAddr and BindAddr.
	LedgerPort int
	// Voters is how many agents vote in the ledger (1, 3 or 5); the rest
	// keep a replica without a vote.
	Voters int
	// Found lets this node found a new single-voter ledger at start when
	// it has none and no member it reaches belongs to one: a node started
	// without seeds. A node that may not found (neither Found,
	// BootstrapExpect nor LedgerRecord) waits, not ready, until it reaches
	// a ledger.
	Found bool
	// BootstrapExpect, when set, founds a ledger as Consul's
	// bootstrap_expect does: once this many agents with the same setting
	// and no ledger state meet in gossip, each of them starts the same
	// ledger with all of them as its first voters. Every host gets the same
	// configuration; a node that reaches a member of a ledger joins it
	// instead. Exclusive with Found and LedgerRecord.
	BootstrapExpect int
	// LedgerRecord, when set, is the one place outside the mesh that names
	// the cluster's ledger (with --join-kubernetes: an object in the
	// Kubernetes API). A node without ledger state founds only if it
	// created the record or the record lists it among the founders, so
	// one that lost its state finds the recorded ledger and joins it
	// instead of founding a second one; a node whose ledger is not the
	// recorded one hands out no addresses. Exclusive with Found and
	// BootstrapExpect.
	LedgerRecord LedgerRecord

	Pool      netip.Prefix
	BlockBits int
	// Lease is how long a grant of this node's block lasts after the
	// claim that renewed it (the lease rule, see package ledger).
	Lease time.Duration
	// StateDir holds node-id, block.json (the block restored after a
	// restart) and the ledger's log and snapshots under raft/.
	StateDir string
	// Incarnation, when set, ties the restart rule to a record outside the
	// mesh that ends when the host is removed for good (with
	// --join-kubernetes: the UID of this host's Node object). Nil: the
	// restart rule depends on block.json and the local ledger alone.
	Incarnation Incarnation

	// SecretKey (16, 24 or 32 bytes) turns on AES-GCM encryption of all
	// gossip; members without the key can neither join nor be heard.
	SecretKey []byte
	// AllowForeignHostIP accepts members whose host IP differs from their
	// gossip address.
	AllowForeignHostIP bool
	// Join lists seed addresses, "host" or "host:port".
	Join []string
	// ReconnectInterval is how often members memberlist declared dead, and
	// unanswered seeds, are dialled again.
	ReconnectInterval time.Duration
	// LeaveTimeout bounds the wait for the graceful leave to be gossiped on
	// shutdown.
	LeaveTimeout time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Transport replaces the UDP/TCP transport (tests: in-memory networks).
	Transport memberlist.NodeAwareTransport
	// Tune adjusts the memberlist configuration last (tests: faster timers).
	Tune func(*memberlist.Config)
	// Clock is this host's clock, on which this node's lease ends (nil:
	// hostclock.ThisBoot; tests: a clock they move).
	Clock hostclock.Clock

	// LedgerNetwork replaces the ledger's TCP listener and dialer (tests:
	// in-memory streams).
	LedgerNetwork ledger.Network
	// Report is what this node answers a member's Mesh.Report with (see
	// ledger.Config.Report); nil: it refuses.
	Report func(ctx context.Context) ([]byte, error)
	// LedgerStores replaces the ledger's on-disk log and snapshots (tests).
	LedgerStores *ledger.Stores
	// TuneLedger adjusts the ledger's configuration last (tests: faster
	// raft and autopilot timers).
	TuneLedger func(*ledger.Config)
}

// Incarnation names this host's current incarnation in a record outside
// the mesh, such as the Kubernetes Node object (its UID), whose deletion
// says the host is gone for good. The mesh saves the incarnation under which
// the ledger last confirmed its block with the block, and applies the
// restart rule only while that incarnation still holds: a block released
// because its node's record was deleted is then never used again by that
// node without the ledger's word.
type Incarnation interface {
	// Current is this host's incarnation as last seen, "" while unknown
	// or absent. It must not block.
	Current() string
	// Verify asks the record now whether saved is still this host's
	// incarnation: nil if so, otherwise why not (absent, another one,
	// unreachable). Called once on start, before the restart rule.
	Verify(ctx context.Context, saved string) error
}

// LedgerRecord names the cluster's one ledger in a record outside the mesh,
// created at most once.
type LedgerRecord interface {
	// Create records want unless a ledger is recorded already, in one
	// atomic step (a create that fails if the record exists). It returns
	// the record that holds afterwards and whether it is want.
	Create(ctx context.Context, want RecordedLedger) (got RecordedLedger, created bool, err error)
	// Read returns the record, and false if there is none.
	Read(ctx context.Context) (got RecordedLedger, ok bool, err error)
	// Where names the record for people ("ConfigMap kube-system/...").
	Where() string
}

// RecordedLedger is what a LedgerRecord holds.
type RecordedLedger struct {
	ClusterID ledger.ClusterID
	// Founder names the node that created the record (for people).
	Founder string
	// Founders are the ledger's first voters, each of which founds it
	// with exactly these (see recordFounders). None in a record written
	// before they were recorded: the founder founded alone.
	Founders []ledger.Founder
}

// lists reports whether id is one of r's founders.
func (r RecordedLedger) lists(id ledger.NodeID) bool {
	return slices.ContainsFunc(r.Founders, func(f ledger.Founder) bool { return f.ID == id })
}

// withDefaults returns c with defaults filled in, or an error naming the
// first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.LedgerPort == 0 {
		c.LedgerPort = DefaultLedgerPort
	}
	if c.Voters == 0 {
		c.Voters = DefaultVoters
	}
	if !c.Pool.IsValid() {
		c.Pool = DefaultPool
	}
	if c.BlockBits == 0 {
		c.BlockBits = DefaultBlockBitsFor(c.Pool)
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = DefaultReconnectInterval
	}
	if c.LeaveTimeout == 0 {
		c.LeaveTimeout = DefaultLeaveTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		clock, err := hostclock.ThisBoot()
		if err != nil {
			return c, fmt.Errorf("mesh: %w", err)
		}
		c.Clock = clock
	}
	if err := CheckNodeName(c.NodeName); err != nil {
		return c, err
	}
	switch {
	case !c.AdvertiseAddr.IsValid() || c.AdvertiseAddr.Is4() != c.Pool.Addr().Is4():
		return c, fmt.Errorf("advertise address %s must be an %s address, as pool %s is (an IPv6-only cluster has an IPv6 pool and IPv6 host addresses)", c.AdvertiseAddr, familyName(c.Pool.Addr()), c.Pool)
	case c.BindAddr.IsValid() && c.BindAddr.Is4() != c.AdvertiseAddr.Is4():
		return c, fmt.Errorf("bind address %s must be an %s address, as the advertise address %s is", c.BindAddr, familyName(c.AdvertiseAddr), c.AdvertiseAddr)
	case c.AdvertiseAddr6.IsValid() && c.Pool.Addr().Is6():
		return c, fmt.Errorf("an IPv6 advertise address %s beside the IPv6 pool %s: the advertise address %s is the host's IPv6 address already", c.AdvertiseAddr6, c.Pool, c.AdvertiseAddr)
	case c.ReconnectInterval < 0:
		return c, fmt.Errorf("reconnect interval %s is negative", c.ReconnectInterval)
	case c.StateDir == "":
		return c, fmt.Errorf("a state directory is required to keep the block across restarts")
	}
	for _, err := range []error{CheckPort(c.Port), CheckLedgerPort(c.LedgerPort, c.Port), CheckVoters(c.Voters),
		CheckPool(c.Pool, c.BlockBits), CheckLease(c.Lease), CheckSecretKey(c.SecretKey), CheckBootstrapExpect(c.BootstrapExpect, c.Voters)} {
		if err != nil {
			return c, err
		}
	}
	ways := 0
	for _, set := range []bool{c.Found, c.BootstrapExpect > 0, c.LedgerRecord != nil} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		return c, fmt.Errorf("founding without seeds, bootstrap-expect and a ledger record are three ways to found a ledger; choose one")
	}
	if err := (Rules{Pool: c.Pool, BlockBits: c.BlockBits}).checkHostIP(c.AdvertiseAddr, netip.Addr{}); err != nil {
		return c, fmt.Errorf("advertise address: %w", err)
	}
	if c.AdvertiseAddr6.IsValid() {
		if err := checkHostIP6(c.AdvertiseAddr6); err != nil {
			return c, fmt.Errorf("IPv6 advertise address: %w", err)
		}
	}
	return c, nil
}

// listenAddr is where the gossip and ledger sockets listen: BindAddr when
// set, else every address of the advertise address's family (an IPv6-only
// host may have no IPv4 address to accept "0.0.0.0" on).
func (c Config) listenAddr() netip.Addr {
	switch {
	case c.BindAddr.IsValid():
		return c.BindAddr
	case c.AdvertiseAddr.Is6():
		return netip.IPv6Unspecified()
	default:
		return netip.IPv4Unspecified()
	}
}

// familyName is "IPv4" or "IPv6", after a's family.
func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
