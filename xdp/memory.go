package xdp

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// Memory reports the kernel memory charged to each of the datapath's maps
// (the "memlock" of /proc/self/fdinfo), in bytes; "maglev_tables" includes
// every VIP's inner table.
func (d *Datapath) Memory() (map[string]uint64, error) {
	out := map[string]uint64{}
	maps := map[string]*ebpf.Map{
		"vip_filter": d.objs.VipFilter, "vip_addrs": d.objs.VipAddrs, "vips": d.objs.Vips,
		"maglev_tables": d.objs.MaglevTables, "backends": d.objs.Backends, "pins4": d.objs.Pins4, "pins6": d.objs.Pins6,
		"stats": d.objs.Stats, "vip_stats": d.objs.VipStats, "backend_stats": d.objs.BackendStats,
		"tx_ports": d.objs.TxPorts, "settings_map": d.objs.SettingsMap,
		"vip_index": d.objs.VipIndex, "vip_slots": d.objs.VipSlots, "pin_filter": d.objs.PinFilter,
		"nat4": d.objs.Nat4, "nat6": d.objs.Nat6, "nat_filter": d.objs.NatFilter,
	}
	for name, m := range maps {
		n, err := memlock(m)
		if err != nil {
			return nil, fmt.Errorf("memory of %s: %w", name, err)
		}
		out[name] = n
	}
	var idx uint32
	var id ebpf.MapID
	it := d.objs.MaglevTables.Iterate()
	for it.Next(&idx, &id) {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue // replaced meanwhile
		}
		n, err := memlock(m)
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("memory of table %d: %w", idx, err)
		}
		out["maglev_tables"] += n
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("memory of tables: %w", err)
	}
	return out, nil
}

func memlock(m *ebpf.Map) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no memlock in fdinfo")
}
