package main

import (
	"context"

	"github.com/xdplb/xdplb/internal/controlplane"
)

// The control socket speaks one JSON request per connection, one JSON
// response back (controlplane.Request, controlplane.Response). The daemon
// implements controlAPI; the CLI is its client (controlplane.Call).

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
	Request         = controlplane.Request
	Response        = controlplane.Response
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
