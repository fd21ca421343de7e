package xdp

import (
	"encoding/hex"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

func TestScratchSmoke(t *testing.T) {
	d, err := Open(Options{PinPath: NoPin, MaxFlows: 1024, MaxVIPs: 64, MaxBackends: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	k := VIPKey{Addr: netip.MustParseAddr("198.18.100.1"), Port: 80, Proto: TCP}
	if err := d.UpsertVIP(k, VIP{Mode: ModeDSRL2, HashSeed: 1}); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:11")
	smac, _ := net.ParseMAC("02:00:00:00:00:02")
	if err := d.UpsertBackend(7, Backend{Addr: netip.MustParseAddr("198.18.0.11"), IfIndex: 1, NextHopMAC: mac, SrcMAC: smac, MTU: 1500, Up: true}); err != nil {
		t.Fatal(err)
	}
	tab := make([]uint32, 251)
	for i := range tab {
		tab[i] = 7
	}
	if err := d.SetTable(k, tab); err != nil {
		t.Fatal(err)
	}
	pkt, _ := hex.DecodeString("020000000002" + "0200000000aa" + "0800" +
		"45000028000040004006" + "0000" + "c612000a" + "c6126401" +
		"30390050000000000000000050022000" + "00000000")
	ret, out, err := d.objs.Xdplb.Test(pkt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ret=%d out=%x", ret, out)
	cs, _ := d.Counters()
	for _, c := range cs {
		if c.Value > 0 {
			t.Logf("%s/%s=%d", c.Action, c.Reason, c.Value)
		}
	}
	_ = ebpf.Array
}
