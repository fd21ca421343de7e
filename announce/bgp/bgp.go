package bgp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// GracefulShutdown is the well-known GRACEFUL_SHUTDOWN community of RFC
// 8326, 65535:0.
const GracefulShutdown = 0xFFFF0000

// DefaultHoldTime is the hold time of a Peer that sets none.
const DefaultHoldTime = 90 * time.Second

// connectRetry is how often a peer that is not up is dialled again.
const connectRetry = 5 * time.Second

// ErrRunning is returned by Run when the speaker runs already or ran before.
var ErrRunning = errors.New("bgp speaker runs already or has run")

// Peer is a BGP neighbour.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// HoldTime is proposed to the peer (DefaultHoldTime when zero);
	// keepalives go every third of the negotiated one.
	HoldTime time.Duration
	// Password turns on TCP MD5 signatures (RFC 2385) when not empty.
	Password string
	// Port is the peer's port, 179 when zero.
	Port uint16
}

// Options configure a [Speaker].
type Options struct {
	LocalASN uint32
	RouterID netip.Addr
	// ListenPort is the port sessions are accepted on; -1 turns listening
	// off (the speaker only dials out), 0 means 179.
	ListenPort int
	Peers      []Peer
	// Communities are added to every route.
	Communities []uint32
	// GracefulRestart announces the capability with RestartTime; Restarting
	// says the daemon restarted with its datapath forwarding all along
	// (the restart and forwarding-state bits).
	GracefulRestart bool
	RestartTime     time.Duration
	Restarting      bool
	// DrainGracefulShutdown makes a drain tag the routes with
	// GracefulShutdown instead of withdrawing them.
	DrainGracefulShutdown bool
}

// PeerStatus is a peer as `xdplb bgp` shows it.
type PeerStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the session state, as RFC 4271 names it in lower case:
	// idle, connect, active, opensent, openconfirm, established.
	State string `json:"state"`
	// Since is when the session was established (zero when it is not).
	Since time.Time `json:"since,omitzero"`
	// HoldTime is the negotiated hold time (zero when not established).
	HoldTime time.Duration `json:"holdTime"`
	// Sent and Received count the prefixes sent to and received from the
	// peer.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
}

// Status is the speaker as `xdplb bgp` shows it.
type Status struct {
	LocalASN uint32       `json:"localASN"`
	RouterID string       `json:"routerID"`
	Drained  bool         `json:"drained"`
	Routes   []string     `json:"routes"` // the prefixes in the RIB, sorted
	Peers    []PeerStatus `json:"peers"`
}

// A Speaker announces VIPs to BGP peers. Create it with [New], start
// [Speaker.Run] in a goroutine, change the VIPs with [Speaker.SetVIPs] at
// any time (also before Run), and release it with [Speaker.Close].
type Speaker struct {
	opts Options
	log  *slog.Logger
	srv  *server.BgpServer

	wake chan struct{}

	mu      sync.Mutex
	started bool
	closed  bool
	want    []netip.Addr        // announceable, as last set
	drained bool                // drain asked for
	rib     map[netip.Addr]bool // what is in the RIB: tagged (drained) or not
	peers   []Peer
}

// New checks opts and makes a speaker; nothing is sent before Run. log may
// be nil.
func New(opts Options, log *slog.Logger) (*Speaker, error) {
	if log == nil {
		log = slog.Default()
	}
	switch {
	case opts.LocalASN == 0:
		return nil, errors.New("bgp: the local AS number is zero")
	case !opts.RouterID.Is4():
		return nil, fmt.Errorf("bgp: router ID %v is not an IPv4 address", opts.RouterID)
	case opts.ListenPort < -1 || opts.ListenPort > 65535:
		return nil, fmt.Errorf("bgp: listen port %d is out of range", opts.ListenPort)
	}
	opts.Peers = slices.Clone(opts.Peers)
	for i, p := range opts.Peers {
		if !p.Address.IsValid() || p.ASN == 0 {
			return nil, fmt.Errorf("bgp: peer %v: an address and an AS number are needed", p.Address)
		}
		if p.HoldTime == 0 {
			opts.Peers[i].HoldTime = DefaultHoldTime
		}
	}
	if opts.ListenPort == 0 {
		opts.ListenPort = 179
	}
	log = log.With("announcer", "bgp")
	return &Speaker{
		opts:  opts,
		log:   log,
		srv:   server.NewBgpServer(server.LoggerOption(logger{log})),
		wake:  make(chan struct{}, 1),
		rib:   map[netip.Addr]bool{},
		peers: opts.Peers,
	}, nil
}

// Name names the speaker in the status.
func (s *Speaker) Name() string { return "bgp" }

// SetVIPs replaces the set of addresses to announce.
func (s *Speaker) SetVIPs(vips []netip.Addr) {
	s.mu.Lock()
	s.want = slices.Clone(vips)
	s.mu.Unlock()
	s.poke()
}

// SetDrained withdraws every route (or tags it with GRACEFUL_SHUTDOWN when
// the options say so) while drained is true, and announces them again when
// it is false.
func (s *Speaker) SetDrained(drained bool) {
	s.mu.Lock()
	s.drained = drained
	s.mu.Unlock()
	s.poke()
}

func (s *Speaker) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run starts the BGP server, announces the VIPs set so far, then brings up
// the sessions, and keeps the routes in line with SetVIPs and SetDrained
// until ctx ends. With graceful restart on, the sessions are then left to
// close with the process, without a NOTIFICATION, so peers keep the
// routes for the restart time; without it they are stopped with a Cease.
func (s *Speaker) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return ErrRunning
	}
	s.started = true
	s.mu.Unlock()

	// GoBGP's server loop has no way to stop: it lives as long as the
	// process, idle once StopBgp has run.
	go s.srv.Serve()
	global := &api.Global{Asn: s.opts.LocalASN, RouterId: s.opts.RouterID.String(), ListenPort: int32(s.opts.ListenPort)}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		return fmt.Errorf("starting bgp: %w", err)
	}
	if err := s.srv.WatchEvent(ctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.peerEvent); err != nil {
		return fmt.Errorf("watching bgp peers: %w", err)
	}
	// The routes go into the RIB before any session comes up, so that the
	// first update a peer gets (before the End-of-RIB marker) has them all.
	s.sync(ctx)
	for _, p := range s.peers {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			return fmt.Errorf("adding bgp peer %v: %w", p.Address, err)
		}
	}
	s.log.Info("bgp speaker started", "asn", s.opts.LocalASN, "router_id", s.opts.RouterID, "listen_port", s.opts.ListenPort, "peers", len(s.peers), "graceful_restart", s.opts.GracefulRestart, "restarting", s.opts.Restarting)
	for {
		select {
		case <-ctx.Done():
			s.stop()
			return nil
		case <-s.wake:
			s.sync(ctx)
		}
	}
}

func (s *Speaker) stop() {
	if s.opts.GracefulRestart {
		// No NOTIFICATION: the peers see the TCP connections close with
		// the process and keep the routes as stale until the restarted
		// daemon sends them again, or the restart time passes.
		s.log.Info("bgp speaker stopped; peers keep the routes for the graceful restart", "restart_time", s.opts.RestartTime)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		s.log.Warn("stopping bgp", "err", err)
	}
}

// Close marks the speaker closed; Run releases the server when its context
// ends.
func (s *Speaker) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *Speaker) apiPeer(p Peer) *api.Peer {
	hold := uint64(p.HoldTime / time.Second)
	fam := family(p.Address)
	afi := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}
	peer := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: max(hold/3, 1),
			ConnectRetry: uint64(connectRetry / time.Second), IdleHoldTimeAfterReset: uint64(connectRetry / time.Second),
		}},
		Transport: &api.Transport{RemotePort: uint32(cmp.Or(p.Port, 179))},
		AfiSafis:  []*api.AfiSafi{afi},
	}
	if s.opts.GracefulRestart {
		peer.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(s.opts.RestartTime / time.Second),
			LocalRestarting: s.opts.Restarting,
			// NotificationEnabled stays false: no RFC 8538, so a hold
			// timer expiry withdraws the routes at once.
		}
		afi.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	return peer
}

// sync brings the RIB in line with the VIPs and the drain.
func (s *Speaker) sync(ctx context.Context) {
	s.mu.Lock()
	want := map[netip.Addr]bool{} // VIP → tagged
	if !s.drained || s.opts.DrainGracefulShutdown {
		for _, a := range s.want {
			want[a] = s.drained
		}
	}
	have := maps(s.rib)
	s.mu.Unlock()

	for a := range have {
		if _, ok := want[a]; ok {
			continue
		}
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: family(a), Path: s.path(a, false)}); err != nil {
			s.log.Error("withdrawing a route", "vip", a, "err", err)
			continue
		}
		s.log.Info("route withdrawn", "vip", a)
		s.mu.Lock()
		delete(s.rib, a)
		s.mu.Unlock()
	}
	for a, tagged := range want {
		if was, ok := have[a]; ok && was == tagged {
			continue
		}
		if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: s.path(a, tagged)}); err != nil {
			s.log.Error("announcing a route", "vip", a, "err", err)
			continue
		}
		s.log.Info("route announced", "vip", a, "graceful_shutdown", tagged)
		s.mu.Lock()
		s.rib[a] = tagged
		s.mu.Unlock()
	}
}

func maps(m map[netip.Addr]bool) map[netip.Addr]bool {
	out := make(map[netip.Addr]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func family(a netip.Addr) *api.Family {
	if a.Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

// path is the host route of a: the next hop is left unspecified, which
// GoBGP replaces with the session's local address for every peer.
func (s *Speaker) path(a netip.Addr, tagged bool) *api.Path {
	nlri := mustAny(&api.IPAddressPrefix{Prefix: a.String(), PrefixLen: uint32(a.BitLen())})
	attrs := []*anypb.Any{mustAny(&api.OriginAttribute{Origin: 0})} // IGP
	if a.Is4() {
		attrs = append(attrs, mustAny(&api.NextHopAttribute{NextHop: "0.0.0.0"}))
	} else {
		attrs = append(attrs, mustAny(&api.MpReachNLRIAttribute{Family: family(a), NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}}))
	}
	comms := slices.Clone(s.opts.Communities)
	if tagged {
		comms = append(comms, GracefulShutdown)
	}
	if len(comms) > 0 {
		attrs = append(attrs, mustAny(&api.CommunitiesAttribute{Communities: comms}))
	}
	return &api.Path{Family: family(a), Nlri: nlri, Pattrs: attrs}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages of the generated api package
	}
	return a
}

func (s *Speaker) peerEvent(r *api.WatchEventResponse) {
	pe := r.GetPeer()
	if pe == nil || pe.Type != api.WatchEventResponse_PeerEvent_STATE || pe.Peer == nil || pe.Peer.State == nil {
		return
	}
	st := pe.Peer.State
	s.log.Info("bgp session", "peer", st.NeighborAddress, "asn", st.PeerAsn, "state", stateName(st.SessionState))
}

func stateName(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

// Advertised returns the VIPs whose routes are in the RIB, sorted.
func (s *Speaker) Advertised() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Addr, 0, len(s.rib))
	for a := range s.rib {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// Status returns the peers and the routes; before Run the peers are listed
// as idle.
func (s *Speaker) Status(ctx context.Context) Status {
	s.mu.Lock()
	st := Status{LocalASN: s.opts.LocalASN, RouterID: s.opts.RouterID.String(), Drained: s.drained, Routes: []string{}, Peers: []PeerStatus{}}
	started := s.started
	s.mu.Unlock()
	for _, a := range s.Advertised() {
		st.Routes = append(st.Routes, netip.PrefixFrom(a, a.BitLen()).String())
	}
	got := map[string]PeerStatus{}
	if started {
		err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			ps := PeerStatus{State: "unknown"}
			if p.State != nil {
				ps.Address, ps.ASN, ps.State = p.State.NeighborAddress, p.State.PeerAsn, stateName(p.State.SessionState)
			}
			if p.Conf != nil {
				ps.Address = p.Conf.NeighborAddress
			}
			if t := p.GetTimers().GetState(); t != nil && ps.State == "established" {
				if t.Uptime != nil {
					ps.Since = t.Uptime.AsTime()
				}
				ps.HoldTime = time.Duration(t.NegotiatedHoldTime) * time.Second
			}
			for _, af := range p.AfiSafis {
				if af.State == nil {
					continue
				}
				// GoBGP counts what it would send, session up or not, and
				// the End-of-RIB marker with graceful restart.
				sent := af.State.Advertised
				if s.opts.GracefulRestart && sent > 0 {
					sent--
				}
				if ps.State != "established" {
					sent = 0
				}
				ps.Sent += sent
				ps.Received += af.State.Received
			}
			got[ps.Address] = ps
		})
		if err != nil {
			s.log.Warn("listing bgp peers", "err", err)
		}
	}
	for _, p := range s.peers {
		ps, ok := got[p.Address.String()]
		if !ok {
			ps = PeerStatus{State: "idle"}
		}
		ps.Address, ps.ASN = p.Address.String(), p.ASN
		st.Peers = append(st.Peers, ps)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Address < st.Peers[j].Address })
	return st
}

// logger hands GoBGP's log lines to slog; GoBGP's info lines are debug
// lines here, its warnings and errors stay what they are.
type logger struct{ l *slog.Logger }

func (l logger) args(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k, f[k])
	}
	return out
}

func (l logger) Panic(msg string, f gobgplog.Fields) {
	l.l.Error("gobgp: "+msg, l.args(f)...)
	panic(msg)
}
func (l logger) Fatal(msg string, f gobgplog.Fields) {
	l.l.Error("gobgp: "+msg, l.args(f)...)
	panic(msg)
}
func (l logger) Error(msg string, f gobgplog.Fields) { l.l.Error("gobgp: "+msg, l.args(f)...) }
func (l logger) Warn(msg string, f gobgplog.Fields)  { l.l.Warn("gobgp: "+msg, l.args(f)...) }
func (l logger) Info(msg string, f gobgplog.Fields)  { l.l.Debug("gobgp: "+msg, l.args(f)...) }
func (l logger) Debug(msg string, f gobgplog.Fields) {}
func (l logger) SetLevel(gobgplog.LogLevel)          {}
func (l logger) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }
