package main

import (
	"context"
	"encoding/json"

	"github.com/xdplb/xdplb/internal/controlplane"
)

// The control socket speaks one JSON request per connection, one JSON
// response back. The daemon implements controlAPI; the CLI is its client.

// Request is a control-socket request.
type Request struct {
	// Command is one of: status, vips, backends, conntrack, maglev, explain,
	// reload, plan, monitor, top, bgp, drain, undrain, announce.
	Command string `json:"command"`
	// VIP selects a VIP ("ADDR:PORT/PROTO", as xdp.VIPKey.String prints
	// it): a filter for conntrack, the subject of maglev and explain.
	VIP string `json:"vip,omitempty"`
	// From is the client ("ADDR:PORT") for explain.
	From string `json:"from,omitempty"`
	// SYN makes explain run a TCP SYN rather than an ACK.
	SYN bool `json:"syn,omitempty"`
	// Name and Config are the candidate file of plan: its name (for
	// errors) and content. No Config plans the daemon's own file.
	Name   string `json:"name,omitempty"`
	Config []byte `json:"config,omitempty"`
	// Filter selects the events of monitor.
	Filter *MonitorFilter `json:"filter,omitempty"`
	// State is active or standby for announce; empty asks for the state.
	State string `json:"state,omitempty"`
}

// Response is a control-socket response: Data on success, Error otherwise.
type Response struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// controlAPI is what the daemon answers on the control socket.
type controlAPI interface {
	Status() StatusInfo
	VIPs() []VIPInfo
	Backends() []BackendInfo
	Flows(vip string) ([]FlowInfo, error)
	Maglev(vip string) (MaglevInfo, error)
	Explain(from, vip string, syn bool) (ExplainInfo, error)
	Reload() ReloadInfo
	Plan(name string, config []byte) (PlanInfo, error)
	Top() (TopInfo, error)
	// Monitor streams the datapath's events to send until ctx ends or send
	// fails; the first is of type "start".
	Monitor(ctx context.Context, f MonitorFilter, send func(MonitorEvent) error) error
	BGP() (BGPInfo, error)
	SetDrained(drained bool) (DrainInfo, error)
	// L2State sets the state of the L2 announcers (active, standby) or,
	// with "", returns it.
	L2State(state string) (L2StateInfo, error)
}

// The answers are the control plane's types.
type (
	StatusInfo      = controlplane.StatusInfo
	AnnounceInfo    = controlplane.AnnounceInfo
	SourceInfo      = controlplane.SourceInfo
	ConflictInfo    = controlplane.ConflictInfo
	InterfaceInfo   = controlplane.InterfaceInfo
	ConfigInfo      = controlplane.ConfigInfo
	ReloadInfo      = controlplane.ReloadInfo
	ApplyInfo       = controlplane.ApplyInfo
	Counts          = controlplane.Counts
	VIPInfo         = controlplane.VIPInfo
	VIPBackendInfo  = controlplane.VIPBackendInfo
	BackendInfo     = controlplane.BackendInfo
	HealthInfo      = controlplane.HealthInfo
	FlowInfo        = controlplane.FlowInfo
	MaglevInfo      = controlplane.MaglevInfo
	SlotsShare      = controlplane.SlotsShare
	ExplainInfo     = controlplane.ExplainInfo
	ProgramRun      = controlplane.ProgramRun
	VIPMetric       = controlplane.VIPMetric
	BackendMetric   = controlplane.BackendMetric
	TopInfo         = controlplane.TopInfo
	CounterInfo     = controlplane.CounterInfo
	MonitorFilter   = controlplane.MonitorFilter
	MonitorEvent    = controlplane.MonitorEvent
	PlanInfo        = controlplane.PlanInfo
	ServicePlan     = controlplane.ServicePlan
	VIPPlanInfo     = controlplane.VIPPlanInfo
	MoveInfo        = controlplane.MoveInfo
	BackendPlanInfo = controlplane.BackendPlanInfo
	PinEstimate     = controlplane.PinEstimate
	LaterInfo       = controlplane.LaterInfo
	AnnouncePlan    = controlplane.AnnouncePlan
	BGPInfo         = controlplane.BGPInfo
	BGPPeerInfo     = controlplane.BGPPeerInfo
	DrainInfo       = controlplane.DrainInfo
	L2StateInfo     = controlplane.L2StateInfo
)
