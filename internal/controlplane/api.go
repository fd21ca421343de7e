package controlplane

import (
	"time"

	"github.com/xdplb/xdplb/xdp"
)

// The types below are what the control plane reports: the control socket
// sends them as JSON, as the Data of a Response (client.go), and the CLI
// prints them.

// StatusInfo answers `xdplb status`.
type StatusInfo struct {
	Version    string          `json:"version"`
	Started    time.Time       `json:"started"`
	Interfaces []InterfaceInfo `json:"interfaces"`
	Config     ConfigInfo      `json:"config"`
	LastReload ReloadInfo      `json:"lastReload"`
	Apply      ApplyInfo       `json:"apply"`
	Counts     Counts          `json:"counts"`
	Announced  []AnnounceInfo  `json:"announced,omitempty"`
	// Sources are where services come from, each with what it offers.
	Sources []SourceInfo `json:"sources,omitempty"`
	// Conflicts are VIPs (or service names) that a source offers and
	// another source holds: the first claimant keeps them.
	Conflicts []ConflictInfo `json:"conflicts,omitempty"`
}

// SourceInfo is one source of services.
type SourceInfo struct {
	Name     string `json:"name"`
	Services int    `json:"services"` // services it offers now
	// Updated is when it last sent its services (zero: not yet).
	Updated time.Time `json:"updated,omitzero"`
	// Synced, LastEvent: how a watching source's watch goes (see
	// SyncReporter); nil and zero for the others.
	Synced    *bool     `json:"synced,omitempty"`
	LastEvent time.Time `json:"lastEvent,omitzero"`
	// Leader and Identity: whether this appliance leads the source's
	// election, under which name (see LeaderReporter).
	Leader   *bool  `json:"leader,omitempty"`
	Identity string `json:"identity,omitempty"`
}

// ConflictInfo is a claim a source lost to another.
type ConflictInfo struct {
	// VIP is ADDR:PORT/PROTO, or empty when the conflict is the service
	// name.
	VIP     string    `json:"vip,omitempty"`
	Service string    `json:"service"` // the losing source's service
	Source  string    `json:"source"`  // the losing source
	HeldBy  string    `json:"heldBy"`  // the source that keeps it
	Owner   string    `json:"owner"`   // its service there
	Since   time.Time `json:"since"`
}

// AnnounceInfo is what one announcer announces: an interface answering
// ARP/NDP (Interface is its name) or, later, a BGP speaker.
type AnnounceInfo struct {
	Interface string   `json:"interface"`
	VIPs      []string `json:"vips"`
	// State is active or standby for an L2 announcer in external mode,
	// drained for a drained BGP speaker, and empty otherwise.
	State string `json:"state,omitempty"`
}

// InterfaceInfo is one interface the datapath runs on.
type InterfaceInfo struct {
	Name      string `json:"name"`
	IfIndex   int    `json:"ifindex"`
	Mode      string `json:"mode"` // native or generic
	ProgramID uint32 `json:"programId"`
}

// ConfigInfo is the running configuration.
type ConfigInfo struct {
	File     string    `json:"file"`
	SHA256   string    `json:"sha256"`
	LoadedAt time.Time `json:"loadedAt"`
	// SeedFile is set when the file sets no maglev.seed: the appliance's
	// own seed is kept there.
	SeedFile string `json:"seedFile,omitempty"`
}

// ReloadInfo is the result of the last reload attempt.
type ReloadInfo struct {
	At      time.Time `json:"at"`
	Trigger string    `json:"trigger"` // start, sighup, socket, file
	Result  string    `json:"result"`  // success or failure
	Errors  []string  `json:"errors,omitempty"`
}

// ApplyInfo is the last reconciliation of the datapath.
type ApplyInfo struct {
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration"`
	Errors   []string      `json:"errors,omitempty"`
}

// Counts summarise what the datapath holds.
type Counts struct {
	Services int `json:"services"`
	VIPs     int `json:"vips"`
	Backends int `json:"backends"`
	Flows4   int `json:"flows4"` // pinned IPv4 flows (as of the last maintenance)
	Flows6   int `json:"flows6"`
	// NATFlows are the NAT flows of snat services (as of the last
	// maintenance), of NATCapacity; both 0 without SNAT sources.
	NATFlows    int `json:"natFlows,omitempty"`
	NATCapacity int `json:"natCapacity,omitempty"`
}

// VIPInfo is one VIP (address, port, protocol) of a service.
type VIPInfo struct {
	Service   string           `json:"service"`
	VIP       string           `json:"vip"` // ADDR:PORT/PROTO
	Mode      string           `json:"mode"`
	TableSize int              `json:"tableSize"`
	Backends  []VIPBackendInfo `json:"backends"`
	Stats     xdp.Stats        `json:"stats"`
}

// VIPBackendInfo is a backend as one VIP uses it.
type VIPBackendInfo struct {
	ID      uint32  `json:"id"`
	Address string  `json:"address"` // ADDR or ADDR:PORT
	Weight  uint32  `json:"weight"`
	Healthy bool    `json:"healthy"`
	Slots   int     `json:"slots"`
	Share   float64 `json:"share"` // Slots / TableSize
	Error   string  `json:"error,omitempty"`
}

// BackendInfo is one backend entry of the datapath.
type BackendInfo struct {
	ID         uint32    `json:"id"`
	Service    string    `json:"service"`
	VIP        string    `json:"vip"`
	Address    string    `json:"address"`
	Weight     uint32    `json:"weight"`
	Healthy    bool      `json:"healthy"`
	Slots      int       `json:"slots"`
	NextHopMAC string    `json:"nextHopMac,omitempty"`
	Interface  string    `json:"interface,omitempty"`
	Stats      xdp.Stats `json:"stats"`
	Error      string    `json:"error,omitempty"`
	// Health is the backend's health check, when its service has one.
	Health *HealthInfo `json:"health,omitempty"`
}

// HealthInfo is the state of a backend's health check.
type HealthInfo struct {
	State      string    `json:"state"` // up, down or pending (not checked yet)
	Since      time.Time `json:"since"` // when the state last changed
	LastCheck  time.Time `json:"lastCheck,omitzero"`
	LastResult string    `json:"lastResult,omitempty"` // ok, failed, timeout
	LastError  string    `json:"lastError,omitempty"`
}

// FlowInfo is a pinned flow.
type FlowInfo struct {
	Client    string  `json:"client"` // ADDR:PORT
	VIP       string  `json:"vip"`    // ADDR:PORT/PROTO
	BackendID uint32  `json:"backendId"`
	Backend   string  `json:"backend"`
	IdleSec   float64 `json:"idleSeconds"`
	// A NAT flow (of a snat service) has the SNAT source:port its packets
	// leave with (then Backend is the backend's ADDR:PORT), its state
	// (syn_sent, established, closing, reset, udp) and its age.
	Source string  `json:"source,omitempty"`
	State  string  `json:"state,omitempty"`
	AgeSec float64 `json:"ageSeconds,omitempty"`
}

// MaglevInfo is the slot share of each backend in a VIP's table.
type MaglevInfo struct {
	VIP       string       `json:"vip"`
	TableSize int          `json:"tableSize"`
	Backends  []SlotsShare `json:"backends"`
}

// SlotsShare is one backend's part of a Maglev table.
type SlotsShare struct {
	ID      uint32  `json:"id"`
	Address string  `json:"address"`
	Weight  uint32  `json:"weight"`
	Slots   int     `json:"slots"`
	Share   float64 `json:"share"`
}

// ExplainInfo says where a flow goes and why: the model's reasoning, and
// what the datapath program does with the flow's packet.
type ExplainInfo struct {
	From    string `json:"from"`
	VIP     string `json:"vip"` // the VIP that matched (may be a port-0 wildcard)
	Service string `json:"service"`
	// Packet is the packet explained: "TCP ACK", "TCP SYN" or "UDP datagram".
	Packet    string `json:"packet"`
	Backend   string `json:"backend"` // address of the chosen backend, empty if none
	BackendID uint32 `json:"backendId"`
	// Reason is "pinned" (a conntrack entry keeps the flow on its backend),
	// "table" (the Maglev table slot decides), "previous" (the VIP's table
	// changed moments ago: the previous table's backend keeps the flow) or
	// "no-backend".
	Reason    string `json:"reason"`
	Hash      uint32 `json:"hash"`
	Slot      int    `json:"slot"`
	TableSize int    `json:"tableSize"`
	// Transition is set while the VIP's previous table is still consulted:
	// PrevBackend is where a non-SYN packet of a flow that began before the
	// change would stay (and be pinned), when it differs.
	Transition  bool   `json:"transition"`
	PrevBackend string `json:"prevBackend,omitempty"`
	// Pin is the flow entry the packet writes: "create", "replace" (a stale
	// one) or "" (none).
	Pin string `json:"pin,omitempty"`
	// Text is the explanation in one sentence.
	Text string `json:"text"`
	// Program is what the datapath program does with the packet.
	Program *ProgramRun `json:"program,omitempty"`
	// Agree says the program did what the model explains. When it does not,
	// Disagreement says how: that is a bug, of the program or of the model.
	Agree        bool   `json:"agree"`
	Disagreement string `json:"disagreement,omitempty"`
}

// ProgramRun is one run of the datapath program's dry-run build on a
// packet, against the live maps: nothing is counted, pinned or sent.
type ProgramRun struct {
	Verdict   string `json:"verdict"` // XDP_TX, XDP_REDIRECT, XDP_DROP, XDP_PASS
	Reason    string `json:"reason"`  // the counter it would move, e.g. tx/dsr_l2
	BackendID uint32 `json:"backendId,omitempty"`
	Backend   string `json:"backend,omitempty"`
	Pin       string `json:"pin,omitempty"`
	// Output is the headers of the frame it sends, decoded.
	Output string `json:"output,omitempty"`
}

// PlanInfo answers `xdplb plan`: what applying a candidate configuration
// would change, worked out without applying it.
type PlanInfo struct {
	File string `json:"file"`
	// Running and Candidate are the SHA-256 of the running and the planned
	// file.
	Running   string `json:"running,omitempty"`
	Candidate string `json:"candidate,omitempty"`
	// Errors are the candidate's configuration errors, as `xdplb check`
	// reports them, or why a reload would refuse it as a whole. A plan with
	// errors plans nothing else.
	Errors []string `json:"errors,omitempty"`
	// Changed says whether applying it would change anything.
	Changed  bool          `json:"changed"`
	Services []ServicePlan `json:"services,omitempty"`
	VIPs     []VIPPlanInfo `json:"vips"`
	// Announce is, per announcer, the addresses it would start and stop
	// announcing.
	Announce []AnnouncePlan `json:"announce,omitempty"`
	// Other are changes outside the services (interfaces, encapsulation).
	Other []string `json:"other,omitempty"`
	// ApplyErrors are services the apply would leave out, as the status
	// would report them.
	ApplyErrors []string `json:"applyErrors,omitempty"`
}

// ServicePlan is what happens to a service: add, remove, change or same.
type ServicePlan struct {
	Name   string `json:"name"`
	Action string `json:"action"`
}

// VIPPlanInfo is what happens to one VIP.
type VIPPlanInfo struct {
	VIP     string   `json:"vip"`
	Service string   `json:"service"`
	Action  string   `json:"action"` // add, remove, change, same
	Changes []string `json:"changes,omitempty"`
	// OldTableSize and TableSize are the table sizes before and after.
	OldTableSize int `json:"oldTableSize"`
	TableSize    int `json:"tableSize"`
	// SlotsMoved counts the slots whose backend changes (same table size);
	// Moved is the share of the flow-hash space whose backend changes.
	SlotsMoved int               `json:"slotsMoved"`
	Moved      float64           `json:"moved"`
	Moves      []MoveInfo        `json:"moves,omitempty"`
	Backends   []BackendPlanInfo `json:"backends,omitempty"`
	// Later is the table once the backends whose health check has not
	// decided yet (new ones start down) pass it, when that moves more.
	Later *LaterInfo `json:"later,omitempty"`
	// Pins estimates the flows the change would pin, for a VIP that stays
	// and changes (with Later, once the pending backends are up).
	Pins PinEstimate `json:"pins"`
}

// LaterInfo is a VIP's table change once its pending backends are up.
type LaterInfo struct {
	Pending    []string `json:"pending"`
	SlotsMoved int      `json:"slotsMoved"`
	Moved      float64  `json:"moved"`
}

// MoveInfo is a part of a table going from one backend to another ("none":
// no backend).
type MoveInfo struct {
	From  string  `json:"from"`
	To    string  `json:"to"`
	Slots int     `json:"slots"`
	Share float64 `json:"share"`
}

// BackendPlanInfo is one backend of a VIP after the change.
type BackendPlanInfo struct {
	Address  string `json:"address"`
	ID       uint32 `json:"id"`
	Weight   uint32 `json:"weight"`
	Healthy  bool   `json:"healthy"`
	OldSlots int    `json:"oldSlots"`
	Slots    int    `json:"slots"`
	Change   string `json:"change,omitempty"` // added, removed
	Error    string `json:"error,omitempty"`
}

// PinEstimate is how many live flows of a VIP a change would pin. The
// datapath keeps no state for flows that were never pinned, so it is an
// estimate: the TCP SYNs counted for the VIP over the last
// conntrack.idleTimeout (sampled every 10 s; a flow that began earlier and
// is still open is not counted, a flow that began and ended in the window
// is), times the share of the flow-hash space that moves. Flows already
// pinned keep their pins; PinsLost counts the pins to backends that go
// away or down, whose flows follow the new table.
type PinEstimate struct {
	Pinned   int     `json:"pinned"`
	PinsLost int     `json:"pinsLost"`
	NewFlows uint64  `json:"newFlows"`
	Window   float64 `json:"windowSeconds"`
	Estimate uint64  `json:"estimate"`
	Basis    string  `json:"basis,omitempty"`
}

// AnnouncePlan is what one announcer would start and stop announcing.
type AnnouncePlan struct {
	Announcer string   `json:"announcer"`
	Start     []string `json:"start,omitempty"`
	Stop      []string `json:"stop,omitempty"`
}

// TopInfo answers `xdplb top`: one sample of every counter it shows.
type TopInfo struct {
	At       time.Time     `json:"at"`
	VIPs     []VIPInfo     `json:"vips"`
	Backends []BackendInfo `json:"backends"`
	// Counters are the datapath's verdict counters (action, reason, value).
	Counters []CounterInfo `json:"counters"`
}

// CounterInfo is one of the datapath's global counters.
type CounterInfo struct {
	Action string `json:"action"`
	Reason string `json:"reason"`
	Value  uint64 `json:"value"`
}

// MonitorEvent is one event of `xdplb monitor`.
type MonitorEvent struct {
	Time time.Time `json:"time"`
	// Type is drop, pin, icmp-error, echo-reply or icmp-sent; "start" opens
	// the stream, "lost" reports events missed.
	Type string `json:"type"`
	// Reason is the counter of the packet's verdict (action/reason, as the
	// metrics name it: drop/no_backend), or event/pin_created for a pin.
	Reason    string `json:"reason,omitempty"`
	Interface string `json:"interface,omitempty"` // the packet came in on
	// Flow is "SRC -> DST" as the program saw it (for an ICMP error, the
	// quoted flow, seen from the client), Protocol its protocol.
	Flow     string `json:"flow,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	SYN      bool   `json:"syn,omitempty"`
	VIP      string `json:"vip,omitempty"` // the VIP the flow matches
	Service  string `json:"service,omitempty"`
	// Backend is the backend it went (or is pinned) to.
	Backend   string `json:"backend,omitempty"`
	BackendID uint32 `json:"backendId,omitempty"`
	// FrameLen is the frame's length; Headers its headers, decoded from
	// its first 128 bytes as the program left it (a drop: as received).
	FrameLen int    `json:"frameLen,omitempty"`
	Headers  string `json:"headers,omitempty"`
	// Lost (type lost) is how many events this listener missed since the
	// last report because it read too slowly; DatapathLost how many every
	// listener missed because the datapath's ring was full.
	Lost         uint64 `json:"lost,omitempty"`
	DatapathLost uint64 `json:"datapathLost,omitempty"`
}

// VIPMetric is one VIP of a service and its counters, for /metrics.
type VIPMetric struct {
	Service  string // service name
	VIP      string // address, e.g. "198.18.10.10" or "2001:db8::10"
	Port     string // destination port, "0" for every port
	Protocol string // "tcp" or "udp"
	Stats    xdp.Stats
}

// BackendMetric is one backend as one VIP uses it, and its counters.
type BackendMetric struct {
	Service  string
	VIP      string
	Port     string
	Protocol string
	Backend  string // the backend's configured address (ADDR or ADDR:PORT)
	Up       bool   // healthy: new flows may be sent to it
	Stats    xdp.Stats
}
