package bgp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// testRouter is a GoBGP server standing in for a router: it listens on a
// free port of 127.0.0.1 and takes the speaker's session passively.
type testRouter struct {
	srv  *server.BgpServer
	port uint16
	lo   netip.Addr // the loopback address both ends use
}

func startTestRouter(t *testing.T, lo netip.Addr) *testRouter {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(lo, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	r := &testRouter{srv: server.NewBgpServer(server.LoggerOption(logger{discard})), port: port, lo: lo}
	go r.srv.Serve()
	ctx := context.Background()
	if err := r.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: 65000, RouterId: "198.18.0.254", ListenPort: int32(port), ListenAddresses: []string{lo.String()},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.srv.StopBgp(context.Background(), &api.StopBgpRequest{}) })
	if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: lo.String(), PeerAsn: 65010},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 9, KeepaliveInterval: 3}},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: family(lo), Enabled: true}}},
	}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// routes returns the router's routes of its family as "PREFIX via NEXTHOP
// [COMMUNITIES]", sorted.
func (r *testRouter) routes(t *testing.T) []string {
	t.Helper()
	return r.routesOf(t, r.lo)
}

// routesOf returns the router's routes of fam's family.
func (r *testRouter) routesOf(t *testing.T, fam netip.Addr) []string {
	t.Helper()
	out := []string{}
	err := r.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: family(fam)}, func(d *api.Destination) {
		for _, p := range d.Paths {
			attrs, err := apiutil.GetNativePathAttributes(p)
			if err != nil {
				t.Error(err)
				return
			}
			var nh string
			var comms []string
			for _, a := range attrs {
				switch a := a.(type) {
				case *bgp.PathAttributeNextHop:
					nh = a.Value.String()
				case *bgp.PathAttributeMpReachNLRI:
					nh = a.Nexthop.String()
				case *bgp.PathAttributeCommunities:
					for _, c := range a.Value {
						comms = append(comms, fmt.Sprintf("%d:%d", c>>16, c&0xffff))
					}
				}
			}
			out = append(out, fmt.Sprintf("%s via %s [%s]", d.Prefix, nh, strings.Join(comms, " ")))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// waitRoutes waits until the router has exactly want.
func (r *testRouter) waitRoutes(t *testing.T, want []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := r.routes(t)
		diff := cmp.Diff(want, got)
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's routes after 30s (-want +got):\n%s", diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSpeakerAnnounces runs the speaker against a GoBGP router on
// loopback: the VIPs set before Run are announced with the session's local
// address as next hop and the configured community; a VIP that stops being
// announceable is withdrawn; a drain withdraws everything or tags the routes
// with GRACEFUL_SHUTDOWN, as configured, and an undrain restores them; the
// status shows the session established and what was sent.
func TestSpeakerAnnounces(t *testing.T) {
	for _, gshut := range []bool{false, true} {
		t.Run(fmt.Sprintf("drainGracefulShutdown=%v", gshut), func(t *testing.T) {
			r := startTestRouter(t, netip.MustParseAddr("127.0.0.1"))
			s, err := New(Options{
				LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.1"), ListenPort: -1,
				Peers:                 []Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65000, HoldTime: 9 * time.Second, Port: r.port}},
				Communities:           []uint32{65010<<16 | 100},
				DrainGracefulShutdown: gshut,
			}, discard)
			if err != nil {
				t.Fatal(err)
			}
			s.SetVIPs([]netip.Addr{netip.MustParseAddr("198.18.100.2"), netip.MustParseAddr("198.18.100.1")})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
				s.Close()
			})

			r.waitRoutes(t, []string{"198.18.100.1/32 via 127.0.0.1 [65010:100]", "198.18.100.2/32 via 127.0.0.1 [65010:100]"})
			s.SetVIPs([]netip.Addr{netip.MustParseAddr("198.18.100.2")})
			r.waitRoutes(t, []string{"198.18.100.2/32 via 127.0.0.1 [65010:100]"})

			st := s.Status(context.Background())
			want := Status{LocalASN: 65010, RouterID: "198.18.0.1", Routes: []string{"198.18.100.2/32"},
				Peers: []PeerStatus{{Address: "127.0.0.1", ASN: 65000, State: "established", HoldTime: 9 * time.Second, Sent: 1}}}
			if diff := cmp.Diff(want, st, cmpIgnoreSince); diff != "" {
				t.Errorf("Status (-want +got):\n%s", diff)
			}
			if st.Peers[0].Since.IsZero() {
				t.Error("Status: an established peer has no Since")
			}

			s.SetDrained(true)
			if gshut {
				r.waitRoutes(t, []string{"198.18.100.2/32 via 127.0.0.1 [65010:100 65535:0]"})
			} else {
				r.waitRoutes(t, []string{})
			}
			s.SetDrained(false)
			r.waitRoutes(t, []string{"198.18.100.2/32 via 127.0.0.1 [65010:100]"})
		})
	}
}

// TestSpeakerAnnouncesIPv6 announces an IPv6 VIP to an IPv6 peer: a /128
// whose next hop is the session's local address.
func TestSpeakerAnnouncesIPv6(t *testing.T) {
	lo := netip.MustParseAddr("::1")
	r := startTestRouter(t, lo)
	s, err := New(Options{
		LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.1"), ListenPort: -1,
		Peers: []Peer{{Address: lo, ASN: 65000, HoldTime: 9 * time.Second, Port: r.port}},
	}, discard)
	if err != nil {
		t.Fatal(err)
	}
	// The IPv4 VIP is not sent: the session carries IPv6 only.
	s.SetVIPs([]netip.Addr{netip.MustParseAddr("2001:db8:100::1"), netip.MustParseAddr("198.18.100.1")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	r.waitRoutes(t, []string{"2001:db8:100::1/128 via ::1 []"})
	if got := r.routesOf(t, netip.IPv4Unspecified()); len(got) != 0 {
		t.Errorf("the IPv6 peer got IPv4 routes: %q", got)
	}
	s.SetVIPs(nil)
	r.waitRoutes(t, []string{})
}

var cmpIgnoreSince = cmp.Transformer("noSince", func(p PeerStatus) PeerStatus { p.Since = time.Time{}; return p })

// TestStatusBeforeSession: a peer that never answers is listed, not
// established, with nothing sent, while the route is in the RIB.
func TestStatusBeforeSession(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close() // nothing listens: the session never comes up
	s, err := New(Options{
		LocalASN: 65010, RouterID: netip.MustParseAddr("198.18.0.1"), ListenPort: -1,
		Peers: []Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65000, HoldTime: 9 * time.Second, Port: port}},
	}, discard)
	if err != nil {
		t.Fatal(err)
	}
	s.SetVIPs([]netip.Addr{netip.MustParseAddr("198.18.100.1")})
	if st := s.Status(context.Background()); len(st.Peers) != 1 || st.Peers[0].State != "idle" {
		t.Errorf("Status before Run: %+v, want the peer idle", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Advertised()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := s.Status(context.Background())
	if len(st.Routes) != 1 || len(st.Peers) != 1 || st.Peers[0].State == "established" || st.Peers[0].Sent != 0 || !st.Peers[0].Since.IsZero() {
		t.Errorf("Status with the peer down: %+v, want the route, the peer not established, 0 sent", st)
	}
}

func TestNewRefuses(t *testing.T) {
	id := netip.MustParseAddr("198.18.0.1")
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{RouterID: id}, "bgp: the local AS number is zero"},
		{Options{LocalASN: 1, RouterID: netip.MustParseAddr("2001:db8::1")}, "bgp: router ID 2001:db8::1 is not an IPv4 address"},
		{Options{LocalASN: 1, RouterID: id, ListenPort: -2}, "bgp: listen port -2 is out of range"},
		{Options{LocalASN: 1, RouterID: id, Peers: []Peer{{Address: id}}}, "bgp: peer 198.18.0.1: an address and an AS number are needed"},
	} {
		_, err := New(tc.opts, discard)
		if err == nil || err.Error() != tc.want {
			t.Errorf("New(%+v) = %v, want %q", tc.opts, err, tc.want)
		}
	}
}

// discard is a logger for tests that drops everything.
var discard = slog.New(slog.NewTextHandler(io.Discard, nil))
