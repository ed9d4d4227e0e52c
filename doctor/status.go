package doctor

// Status is the part of the agent's status (GET /status on its socket,
// `grapevine status -o json`) the checks read.
type Status struct {
	Node     string    `json:"node"`
	HostIP   string    `json:"hostIP"`
	Block    string    `json:"block"`
	Ready    bool      `json:"ready"`
	Reason   string    `json:"reason"`
	Degraded string    `json:"degraded"`
	Settings *Settings `json:"settings"`
	// Encapsulation is the agent's --encapsulation (never, cross-subnet,
	// always).
	Encapsulation string   `json:"encapsulation"`
	Members       []Member `json:"members"`
}

// Settings are the agent's settings the host is checked against.
type Settings struct {
	Iface      string `json:"iface"`
	Pool       string `json:"pool"`
	Masquerade bool   `json:"masquerade"`
	GossipPort int    `json:"gossipPort"`
	LedgerPort int    `json:"ledgerPort"`
	PodMTU     int    `json:"podMTU"`
}

// Member is one peer as the agent sees it.
type Member struct {
	Name           string      `json:"name"`
	Addr           string      `json:"addr"`
	HostIP         string      `json:"hostIP"`
	Block          string      `json:"block"`
	State          string      `json:"state"`
	Foreign        bool        `json:"foreign"`
	Route          string      `json:"route"`
	Path           string      `json:"path"`
	PathReason     string      `json:"pathReason"`
	DataPath       string      `json:"dataPath"`
	DataPathHealth *PathHealth `json:"dataPathHealth"`
}

// PathHealth is the agent's probe of a peer's host over the last minute.
type PathHealth struct {
	Requests int     `json:"requests"`
	Lost     int     `json:"lost"`
	Loss     float64 `json:"loss"`
	RTTp50ms float64 `json:"rttP50ms"`
	RTTp99ms float64 `json:"rttP99ms"`
}

// Route states of a member the agent routes or not (the status's
// route field: node.PeerProgrammed, node.PeerPending, "error: ...").
const (
	routeWithdrawn = "withdrawn"
	routeNone      = "none"
)

// routed reports whether the agent means to route m's block.
func (m Member) routed() bool {
	return !m.Foreign && m.Block != "" && m.Route != routeWithdrawn && m.Route != routeNone
}
