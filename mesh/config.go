package mesh

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// Defaults for zero Config fields.
const (
	DefaultPort              = 7962
	DefaultLedgerPort        = 7963
	DefaultVoters            = 3
	DefaultBlockBits         = 23
	DefaultReclaimAfter      = time.Hour
	DefaultReconnectInterval = 30 * time.Second
	DefaultLeaveTimeout      = 3 * time.Second
)

// DefaultPool is the pod address pool used when Config.Pool is zero.
var DefaultPool = netip.MustParsePrefix("10.244.0.0/16")

// Config configures a Mesh. NodeName and AdvertiseAddr are required; zero
// values of the other fields select the defaults above.
type Config struct {
	// NodeName identifies this node in the cluster; it must be unique.
	NodeName string
	// AdvertiseAddr is the gossip address peers use to reach this node and
	// the host IP they route its block to.
	AdvertiseAddr netip.Addr
	// BindAddr is where the gossip sockets listen (zero: all addresses).
	BindAddr netip.Addr
	// Port is the gossip port (UDP and TCP).
	Port int
	// LedgerPort is the TCP port of the block ledger (raft and its RPCs),
	// on AdvertiseAddr and BindAddr.
	LedgerPort int
	// Voters is how many agents vote in the ledger (1, 3 or 5); the rest
	// keep a replica without a vote.
	Voters int
	// Found lets this node found a new ledger when it has none and no
	// member it reaches belongs to one: a node started without seeds, or
	// the oldest Node of a new Kubernetes cluster. A node that may not
	// found waits, not ready, until it reaches a ledger.
	Found bool

	Pool      netip.Prefix
	BlockBits int
	// ReclaimAfter is how long the ledger's leader must itself have seen a
	// block's owner not alive before it frees the block.
	ReclaimAfter time.Duration
	// StateDir holds node-id, block.json (the block restored after a
	// restart) and the ledger's log and snapshots under raft/.
	StateDir string

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
	// Now is this host's wall clock, only ever compared with itself: when
	// the ledger last confirmed this node's block (tests: skewed clocks).
	Now func() time.Time

	// LedgerNetwork replaces the ledger's TCP listener and dialer (tests:
	// in-memory streams).
	LedgerNetwork ledger.Network
	// LedgerStores replaces the ledger's on-disk log and snapshots (tests).
	LedgerStores *ledger.Stores
	// TuneLedger adjusts the ledger's configuration last (tests: faster
	// raft and autopilot timers).
	TuneLedger func(*ledger.Config)
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
		c.BlockBits = DefaultBlockBits
	}
	if c.ReclaimAfter == 0 {
		c.ReclaimAfter = DefaultReclaimAfter
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
	if c.Now == nil {
		c.Now = time.Now
	}
	switch {
	case c.NodeName == "" || len(c.NodeName) > maxNameLen:
		return c, fmt.Errorf("mesh: node name %q must be 1-%d characters", c.NodeName, maxNameLen)
	case !validName(c.NodeName):
		return c, fmt.Errorf("mesh: node name %q has spaces or non-printable characters", c.NodeName)
	case !c.AdvertiseAddr.Is4():
		return c, fmt.Errorf("mesh: advertise address %s must be an IPv4 address", c.AdvertiseAddr)
	case c.BindAddr.IsValid() && !c.BindAddr.Is4():
		return c, fmt.Errorf("mesh: bind address %s must be an IPv4 address", c.BindAddr)
	case c.Port < 1 || c.Port > 65535:
		return c, fmt.Errorf("mesh: port %d out of range", c.Port)
	case c.LedgerPort < 1 || c.LedgerPort > 65535:
		return c, fmt.Errorf("mesh: ledger port %d out of range", c.LedgerPort)
	case c.LedgerPort == c.Port:
		return c, fmt.Errorf("mesh: ledger port %d is the gossip port", c.LedgerPort)
	case c.Voters != 1 && c.Voters != 3 && c.Voters != 5:
		return c, fmt.Errorf("mesh: %d voters: want 1, 3 or 5 (an odd number survives as many failures as the next even one)", c.Voters)
	case !c.Pool.Addr().Is4() || c.Pool.Masked() != c.Pool:
		return c, fmt.Errorf("mesh: pool %s must be an IPv4 network address", c.Pool)
	case c.BlockBits < c.Pool.Bits() || c.BlockBits > 32 || c.BlockBits-c.Pool.Bits() > 20:
		return c, fmt.Errorf("mesh: block size /%d does not fit pool %s (at most 2^20 blocks)", c.BlockBits, c.Pool)
	case c.ReclaimAfter <= 0 || c.ReconnectInterval < 0:
		return c, fmt.Errorf("mesh: ReclaimAfter must be positive and ReconnectInterval not negative")
	case c.StateDir == "":
		return c, fmt.Errorf("mesh: a state directory is required to keep the block across restarts")
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return c, fmt.Errorf("mesh: gossip key is %d bytes, want 16, 24 or 32", len(c.SecretKey))
	}
	if err := (Rules{Pool: c.Pool, BlockBits: c.BlockBits}).checkHostIP(c.AdvertiseAddr, netip.Addr{}); err != nil {
		return c, fmt.Errorf("mesh: advertise address: %w", err)
	}
	return c, nil
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
