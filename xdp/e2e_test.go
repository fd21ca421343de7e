package xdp_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/scenario"
	"github.com/xdplb/xdplb/internal/testnet"
	"github.com/xdplb/xdplb/xdp"
)

// TestEndToEnd makes real TCP connections from a client through the datapath
// attached to the load balancer's interface, to three backends that hold the
// VIP on lo and answer the client directly: IPv4 and IPv6, L2 DSR and IPIP
// (the backends running xdplb's decap program). Every connection must be
// answered, and each backend must get its fair share within ±25%. Then, with
// connections held open, a backend is removed: every connection on the other
// backends keeps working.
func TestEndToEnd(t *testing.T) {
	testnet.RequirePrivileged(t)
	// 600 connections: each backend's count is then within ±25% of its fair
	// share with a margin of over 4 standard deviations (300 gave ~3).
	const conns = 600
	for _, mode := range []xdp.Mode{xdp.ModeDSRL2, xdp.ModeDSRIPIP} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
			app, err := scenario.Start(ctx, topo, scenario.Options{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := app.Close(); err != nil {
					t.Error(err)
				}
			})
			for _, vip := range []netip.Addr{scenario.VIP4, scenario.VIP6} {
				counts, err := app.Connections(ctx, vip, conns, 8)
				if err != nil {
					t.Fatalf("%s: %v", vip, err)
				}
				t.Logf("%s %s: %v", mode, vip, counts)
				fair := float64(conns) / float64(len(topo.Backends))
				for _, b := range topo.Backends {
					if n := float64(counts[b.Name]); n < 0.75*fair || n > 1.25*fair {
						t.Errorf("%s: backend %s answered %v of %d connections, want %.0f ±25%%", vip, b.Name, n, conns, fair)
					}
				}
				for _, k := range scenario.Keys() {
					if k.Addr != vip {
						continue
					}
					s, err := app.DP.VIPStats(k)
					if err != nil {
						t.Fatal(err)
					}
					if s.NewFlows != conns {
						t.Errorf("%s: VIP new_flows = %d, want %d (one SYN per connection)", vip, s.NewFlows, conns)
					}
				}
			}

			// Hold connections open, remove backend 3, check the others.
			var held []*scenario.Conn
			for i := 0; i < 60; i++ {
				vip := scenario.VIP4
				if i%2 == 1 {
					vip = scenario.VIP6
				}
				c, err := app.Dial(ctx, vip)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				held = append(held, c)
			}
			removed := topo.Backends[2].Name
			if err := app.RemoveBackend(ctx, removed); err != nil {
				t.Fatal(err)
			}
			survivors := 0
			for i, c := range held {
				if c.Backend == removed {
					continue
				}
				survivors++
				if err := c.Echo(fmt.Sprintf("still there %d", i)); err != nil {
					t.Errorf("connection %d to %s on %s broke after removing %s: %v", i, c.RemoteAddr(), c.Backend, removed, err)
				}
			}
			if survivors == 0 {
				t.Fatal("no held connection on a surviving backend")
			}
			// New connections avoid the removed backend.
			counts, err := app.Connections(ctx, scenario.VIP4, 60, 8)
			if err != nil {
				t.Fatal(err)
			}
			if counts[removed] != 0 {
				t.Errorf("removed backend %s got %d new connections", removed, counts[removed])
			}
		})
	}
}

// TestFragmentsEndToEnd sends UDP datagrams larger than the client's MTU
// (1280 bytes, the least IPv6 allows): the client's stack fragments them, the datapath sends every
// fragment of a datagram to the backend of its first, and the backend
// reassembles and answers with what it received. IPv4 and IPv6, L2 DSR and
// IPIP; datagrams from many source ports spread over the backends.
func TestFragmentsEndToEnd(t *testing.T) {
	testnet.RequirePrivileged(t)
	for _, mode := range []xdp.Mode{xdp.ModeDSRL2, xdp.ModeDSRIPIP} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			topo := testnet.NewTestTopology(t, testnet.TopologyConfig{Backends: 3})
			if err := topo.Client.NS.Do(func() error {
				l, err := netlink.LinkByName(topo.Client.Link)
				if err != nil {
					return err
				}
				return netlink.LinkSetMTU(l, 1280) // the least IPv6 allows
			}); err != nil {
				t.Fatal(err)
			}
			app, err := scenario.Start(ctx, topo, scenario.Options{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := app.Close(); err != nil {
					t.Error(err)
				}
			})
			payload := make([]byte, 3000)
			for i := range payload {
				payload[i] = byte(i)
			}
			before, err := app.DP.Counter("event", "fragment_first")
			if err != nil {
				t.Fatal(err)
			}
			const n = 30
			for _, vip := range []netip.Addr{scenario.VIP4, scenario.VIP6} {
				counts := map[string]int{}
				for range n {
					name, err := app.UDPExchange(ctx, vip, payload)
					if err != nil {
						t.Fatalf("%s: %v", vip, err)
					}
					counts[name]++
				}
				t.Logf("%s %s: %v", mode, vip, counts)
				if len(counts) < 2 {
					t.Errorf("%s: %d datagrams all went to %v: not balanced", vip, n, counts)
				}
			}
			after, err := app.DP.Counter("event", "fragment_first")
			if err != nil {
				t.Fatal(err)
			}
			if after-before < 2*n {
				t.Errorf("event/fragment_first moved by %d, want at least %d (a first fragment per datagram)", after-before, 2*n)
			}
		})
	}
}
