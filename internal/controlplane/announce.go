package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/xdplb/xdplb/announce/bgp"
	"github.com/xdplb/xdplb/config"
)

// drainFileName, in paths.state, says that the appliance is drained; it
// outlives a restart.
const drainFileName = "drained"

// l2ActiveFileName, in paths.state, says that the L2 announcers were told
// active in external mode, so that a restarted daemon answers again at once
// (keepalived does not tell it again: its own state has not changed).
const l2ActiveFileName = "l2-active"

var (
	// ErrNoBGP is returned by BGP and SetDrained when the configuration
	// has no announce.bgp.
	ErrNoBGP = errors.New("BGP is not configured (announce.bgp)")
	// ErrNotExternal is returned by SetL2Active when announce.l2.mode is
	// not external.
	ErrNotExternal = errors.New("announce.l2.mode is not external: the L2 announcers answer always")
)

// BGPInfo answers `xdplb bgp`: the speaker, its routes and peers.
type BGPInfo = bgp.Status

// BGPPeerInfo is one peer in BGPInfo.
type BGPPeerInfo = bgp.PeerStatus

// DrainInfo answers `xdplb drain` and `xdplb undrain`.
type DrainInfo struct {
	Drained bool `json:"drained"`
	// Mode is what a drain does to the routes: withdraw, or
	// gracefulShutdown (they stay, tagged 65535:0).
	Mode string `json:"mode"`
	// Routes are the prefixes in the speaker's RIB now.
	Routes []string `json:"routes"`
}

// L2StateInfo answers `xdplb announce`.
type L2StateInfo struct {
	Mode string `json:"mode"` // always or external
	// State is active (the L2 announcers answer) or standby.
	State string `json:"state"`
	// VIPs are what the L2 announcers answer for now.
	VIPs []string `json:"vips"`
}

func (p *Plane) drainFile(cfg *config.Config) string {
	return filepath.Join(cfg.Paths.State, drainFileName)
}

// BGP returns the speaker's status.
func (p *Plane) BGP(ctx context.Context) (BGPInfo, error) {
	if p.bgp == nil {
		return BGPInfo{}, ErrNoBGP
	}
	return p.bgp.Status(ctx), nil
}

// SetDrained drains the appliance (withdraws every BGP route, or tags them
// with GRACEFUL_SHUTDOWN when announce.bgp.drain says so), or undrains it.
// The state is kept in paths.state, so a restarted daemon stays drained.
func (p *Plane) SetDrained(drained bool) (DrainInfo, error) {
	if p.bgp == nil {
		return DrainInfo{}, ErrNoBGP
	}
	p.mu.Lock()
	cfg := p.cfg
	p.drained = drained
	p.mu.Unlock()
	file := p.drainFile(cfg)
	if drained {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return DrainInfo{}, fmt.Errorf("keeping the drain: %w", err)
		}
		if err := os.WriteFile(file, []byte("drained by `xdplb drain`; `xdplb undrain` announces again\n"), 0o644); err != nil {
			return DrainInfo{}, fmt.Errorf("keeping the drain: %w", err)
		}
	} else if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return DrainInfo{}, fmt.Errorf("removing the drain: %w", err)
	}
	p.bgp.SetDrained(drained)
	p.log.Info("drain", "drained", drained, "mode", cfg.Announce.BGP.Drain)
	return p.drainInfo(cfg, drained), nil
}

func (p *Plane) drainInfo(cfg *config.Config, drained bool) DrainInfo {
	d := DrainInfo{Drained: drained, Mode: string(cfg.Announce.BGP.Drain), Routes: []string{}}
	for _, a := range p.bgp.Advertised() {
		d.Routes = append(d.Routes, netip.PrefixFrom(a, a.BitLen()).String())
	}
	return d
}

// Drained says whether the appliance is drained.
func (p *Plane) Drained() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drained
}

// SetL2Active makes the L2 announcers answer (active) or fall silent
// (standby) when announce.l2.mode is external; an outside election such as
// keepalived calls it through `xdplb announce --state`. On becoming active
// each announcer sends its gratuitous announcements at once.
func (p *Plane) SetL2Active(active bool) (L2StateInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Announce.L2.Mode != config.L2ModeExternal {
		return L2StateInfo{}, ErrNotExternal
	}
	file := filepath.Join(p.cfg.Paths.State, l2ActiveFileName)
	var err error
	if active {
		if err = os.MkdirAll(filepath.Dir(file), 0o755); err == nil {
			err = os.WriteFile(file, []byte("told active by `xdplb announce`\n"), 0o644)
		}
	} else if err = os.Remove(file); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		// Answering matters more than remembering: go on, and say so.
		p.log.Warn("keeping the L2 state for a restart", "err", err)
	}
	if p.l2Active != active {
		p.l2Active = active
		p.handOut()
		p.log.Info("L2 announcers told", "state", l2StateName(active), "vips", len(p.announced))
	}
	return p.l2State(), nil
}

// L2State returns the mode and state of the L2 announcers.
func (p *Plane) L2State() L2StateInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.l2State()
}

func (p *Plane) l2State() L2StateInfo {
	s := L2StateInfo{Mode: string(p.cfg.Announce.L2.Mode), State: l2StateName(p.l2Active), VIPs: []string{}}
	if p.l2Active {
		for _, v := range p.announced {
			s.VIPs = append(s.VIPs, v.String())
		}
	}
	return s
}

func l2StateName(active bool) string {
	if active {
		return "active"
	}
	return "standby"
}
