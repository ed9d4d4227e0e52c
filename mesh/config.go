package mesh

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for zero Config fields.
const (
	DefaultPort              = 7962
	DefaultBlockBits         = 23
	DefaultReclaimAfter      = time.Hour
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
	// the claim table and a vote over it small.
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

// CheckPool accepts an IPv4 network address that can be cut into blocks of
// prefix length blockBits: from the pool's own length to MaxBlockBits, and
// at most 2^MaxBlockCountBits of them.
func CheckPool(pool netip.Prefix, blockBits int) error {
	switch {
	case !pool.Addr().Is4():
		return fmt.Errorf("pool %s: only IPv4 pools are supported", pool)
	case pool.Masked() != pool:
		return fmt.Errorf("pool %s is not a network address (did you mean %s?)", pool, pool.Masked())
	case blockBits < pool.Bits() || blockBits > MaxBlockBits:
		return fmt.Errorf("block size /%d must be between the pool's prefix length /%d and /%d", blockBits, pool.Bits(), MaxBlockBits)
	case blockBits-pool.Bits() > MaxBlockCountBits:
		return fmt.Errorf("block size /%d cuts pool %s into more than 2^%d blocks; use a longer pool prefix or a shorter block size",
			blockBits, pool, MaxBlockCountBits)
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

// CheckReclaimAfter accepts zero (the default) or a positive duration.
func CheckReclaimAfter(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("reclaim time %s is negative", d)
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
	// BindAddr is where the gossip sockets listen (zero: all addresses).
	BindAddr netip.Addr
	// Port is the gossip port (UDP and TCP).
	Port int

	Pool      netip.Prefix
	BlockBits int
	// ReclaimAfter is how long the block of a dead or departed node stays
	// reserved before another node may claim it.
	ReclaimAfter time.Duration
	// StateDir holds block.json, the claim restored after a restart.
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
	// Now is the clock for claim times and ReclaimAfter (tests).
	Now func() time.Time
}

// withDefaults returns c with defaults filled in, or an error naming the
// first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Port == 0 {
		c.Port = DefaultPort
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
	if err := CheckNodeName(c.NodeName); err != nil {
		return c, err
	}
	switch {
	case !c.AdvertiseAddr.Is4():
		return c, fmt.Errorf("advertise address %s must be an IPv4 address", c.AdvertiseAddr)
	case c.BindAddr.IsValid() && !c.BindAddr.Is4():
		return c, fmt.Errorf("bind address %s must be an IPv4 address", c.BindAddr)
	case c.ReconnectInterval < 0:
		return c, fmt.Errorf("reconnect interval %s is negative", c.ReconnectInterval)
	case c.StateDir == "":
		return c, fmt.Errorf("a state directory is required to keep the block across restarts")
	}
	for _, err := range []error{CheckPort(c.Port), CheckPool(c.Pool, c.BlockBits), CheckReclaimAfter(c.ReclaimAfter), CheckSecretKey(c.SecretKey)} {
		if err != nil {
			return c, err
		}
	}
	if err := (Rules{Pool: c.Pool, BlockBits: c.BlockBits}).checkHostIP(c.AdvertiseAddr, netip.Addr{}); err != nil {
		return c, fmt.Errorf("advertise address: %w", err)
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
