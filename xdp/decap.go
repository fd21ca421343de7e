package xdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
)

// Decap is the backend-side program that strips IPIP/IP6IP6 (and the mixed
// 4-in-6, 6-in-4) encapsulation addressed to this host and passes the inner
// packet to the stack: the backend of an IPIP VIP needs no tunnel device. It
// trusts only the outer sources of its allowed prefixes (SetAllow): an
// encapsulated packet to this host from any other source is dropped, since
// its inner source could be anything. The outer ECN field is combined into
// the inner header as RFC 6040 asks (normal mode).
type Decap struct {
	objs   decapObjects
	attach *Attachment
	pin    string
}

// DecapCounter is a counter of the decap program.
type DecapCounter struct {
	Name  string
	Value uint64
}

var decapCounterNames = map[decapXdplbDecapCounter]string{
	decapXdplbDecapCounterDECAP_PASS_NOT_IP:             "pass_not_ip",
	decapXdplbDecapCounterDECAP_PASS_NOT_ENCAP:          "pass_not_encapsulated",
	decapXdplbDecapCounterDECAP_PASS_NOT_LOCAL:          "pass_not_local",
	decapXdplbDecapCounterDECAP_PASS_MALFORMED:          "pass_malformed",
	decapXdplbDecapCounterDECAP_PASS_VLAN_STACKED:       "pass_vlan_stacked",
	decapXdplbDecapCounterDECAP_DONE_4IN4:               "decap_ipv4_in_ipv4",
	decapXdplbDecapCounterDECAP_DONE_6IN4:               "decap_ipv6_in_ipv4",
	decapXdplbDecapCounterDECAP_DONE_4IN6:               "decap_ipv4_in_ipv6",
	decapXdplbDecapCounterDECAP_DONE_6IN6:               "decap_ipv6_in_ipv6",
	decapXdplbDecapCounterDECAP_FAILED:                  "drop_failed",
	decapXdplbDecapCounterDECAP_DROP_SOURCE_NOT_ALLOWED: "drop_source_not_allowed",
	decapXdplbDecapCounterDECAP_DROP_ECN_CE_NOT_ECT:     "drop_ecn_ce_not_ect",
}

// AnySource is the allowed set that trusts every outer source: what
// `xdplb decap --allow-any` asks for.
var AnySource = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// DecapOptions configure OpenDecap.
type DecapOptions struct {
	// PinPath as in Options; the link and maps are pinned under
	// PinPath/decap/IFACE/.
	PinPath string
	// Addrs are the outer destinations to decapsulate; empty: those of an
	// earlier attachment whose maps are pinned, else every address of the
	// interface.
	Addrs []netip.Addr
	// Allow are the prefixes of the outer sources whose packets are
	// decapsulated (the load balancers' encap sources), replacing those of an
	// earlier attachment; nil keeps those of an earlier attachment whose maps
	// are pinned. With none at all, every encapsulated packet to this host is
	// dropped: the program never trusts a source it was not told about.
	Allow []netip.Prefix
	// Mode of attachment.
	Mode AttachMode
}

// OpenDecap loads the decap program and attaches it to iface (taking over a
// pinned link of an earlier instance).
func OpenDecap(iface string, opts DecapOptions) (*Decap, error) {
	if opts.PinPath == "" {
		opts.PinPath = DefaultPinPath
	}
	spec, err := loadDecap()
	if err != nil {
		return nil, err
	}
	var copts ebpf.CollectionOptions
	d := &Decap{}
	if opts.PinPath != NoPin {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		dir := filepath.Join(opts.PinPath, "decap", iface)
		if err := ensureBPFFS(dir); err != nil {
			return nil, err
		}
		copts.Maps.PinPath = dir
		d.pin = filepath.Join(dir, "link")
		if err := dropShorterStats(dir, spec.Maps["decap_stats"]); err != nil {
			return nil, err
		}
	}
	if err := spec.LoadAndAssign(&d.objs, &copts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("loading the decap program: maps pinned under %s were made by an incompatible version (remove that directory, then attach again): %w", copts.Maps.PinPath, err)
		}
		return nil, fmt.Errorf("loading the decap program: %w", err)
	}
	if opts.Allow != nil {
		if err := d.SetAllow(opts.Allow); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	// Without addresses, keep those of an earlier attachment (its pinned
	// map), else take the interface's.
	addrs := opts.Addrs
	var k lbVipAddr
	var v uint32
	if len(addrs) == 0 && !d.objs.DecapAddrs.Iterate().Next(&k, &v) {
		if addrs, err = interfaceAddrs(iface); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	if len(addrs) > 0 {
		if err := d.SetAddrs(addrs); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	d.attach, err = attachXDP(d.objs.XdplbDecap, iface, opts.Mode, d.pin)
	if err != nil {
		d.objs.Close()
		return nil, err
	}
	return d, nil
}

// dropShorterStats unpins a counters map pinned in dir by a version with
// fewer counters, so that this one can pin its own: the counters restart at
// zero, and the program is replaced without a gap, every other map (flows,
// allowed sources, addresses) kept. Any other difference is left for the
// loader to refuse.
func dropShorterStats(dir string, spec *ebpf.MapSpec) error {
	path := filepath.Join(dir, spec.Name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading pinned map %s: %w", path, err)
	}
	defer m.Close()
	if m.Type() != spec.Type || m.KeySize() != spec.KeySize || m.ValueSize() != spec.ValueSize || m.MaxEntries() >= spec.MaxEntries {
		return nil
	}
	if err := m.Unpin(); err != nil {
		return fmt.Errorf("replacing the counters (%s) of an earlier version: %w", spec.Name, err)
	}
	return nil
}

func interfaceAddrs(iface string) ([]netip.Addr, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("reading addresses of %q: %w", iface, err)
	}
	as, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("reading addresses of %q: %w", iface, err)
	}
	var out []netip.Addr
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p.Addr())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("interface %q has no address to decapsulate for", iface)
	}
	return out, nil
}

// SetAddrs replaces the outer destinations decapsulated.
func (d *Decap) SetAddrs(addrs []netip.Addr) error {
	want := map[lbVipAddr]bool{}
	for _, a := range addrs {
		want[vipAddrKey(a.Unmap())] = true
	}
	var k lbVipAddr
	var v uint32
	var stale []lbVipAddr
	it := d.objs.DecapAddrs.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		_ = d.objs.DecapAddrs.Delete(k)
	}
	for k := range want {
		if err := d.objs.DecapAddrs.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("adding decap address: %w", err)
		}
	}
	return nil
}

// allowKey is the decap_allow key of p, or an error if p is no valid prefix.
func allowKey(p netip.Prefix) (decapDecapAllowKey, error) {
	if !p.IsValid() {
		return decapDecapAllowKey{}, fmt.Errorf("%q is not a prefix", p)
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	k := decapDecapAllowKey{Prefixlen: 8 + uint32(p.Bits()), Family: 6}
	if p.Addr().Is4() {
		k.Family = 4
	}
	copy(k.Addr[:], p.Addr().AsSlice())
	return k, nil
}

// SetAllow replaces the prefixes of outer sources whose packets are
// decapsulated (IPv4 and IPv6 alike; AnySource trusts everyone). Prefixes in
// both the old and the new set stay trusted throughout; those only in the
// old one are removed after the new ones are added.
func (d *Decap) SetAllow(prefixes []netip.Prefix) error {
	want := map[decapDecapAllowKey]bool{}
	for _, p := range prefixes {
		k, err := allowKey(p)
		if err != nil {
			return fmt.Errorf("allowing decap source: %w", err)
		}
		want[k] = true
	}
	for k := range want {
		if err := d.objs.DecapAllow.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("allowing decap source %s: %w", allowPrefix(k), err)
		}
	}
	var k decapDecapAllowKey
	var v uint32
	var stale []decapDecapAllowKey
	it := d.objs.DecapAllow.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading allowed decap sources: %w", err)
	}
	for _, k := range stale {
		if err := d.objs.DecapAllow.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing decap source %s: %w", allowPrefix(k), err)
		}
	}
	return nil
}

func allowPrefix(k decapDecapAllowKey) netip.Prefix {
	bits := int(k.Prefixlen) - 8
	if k.Family == 4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

// Allowed lists the prefixes of outer sources decapsulated, IPv4 first,
// each family in address order.
func (d *Decap) Allowed() ([]netip.Prefix, error) {
	var out []netip.Prefix
	var k decapDecapAllowKey
	var v uint32
	it := d.objs.DecapAllow.Iterate()
	for it.Next(&k, &v) {
		out = append(out, allowPrefix(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading allowed decap sources: %w", err)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, nil
}

// Attachment describes where the program runs.
func (d *Decap) Attachment() Attachment { return *d.attach }

// Counters reads the decap counters summed over CPUs.
func (d *Decap) Counters() ([]DecapCounter, error) {
	var out []DecapCounter
	var perCPU []uint64
	for i := decapXdplbDecapCounter(0); i < decapXdplbDecapCounterDECAP_COUNTER_MAX; i++ {
		if err := d.objs.DecapStats.Lookup(i, &perCPU); err != nil {
			return nil, fmt.Errorf("reading decap counter %d: %w", i, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out = append(out, DecapCounter{Name: decapCounterNames[i], Value: sum})
	}
	return out, nil
}

// Close releases the program; a pinned attachment stays on the interface.
func (d *Decap) Close() error {
	return errors.Join(d.attach.link.Close(), d.objs.Close())
}

// Detach removes the program from the interface and its pins.
func (d *Decap) Detach() error {
	_ = d.attach.link.Unpin()
	for _, m := range []*ebpf.Map{d.objs.DecapAddrs, d.objs.DecapAllow, d.objs.DecapStats} {
		if m.IsPinned() {
			_ = m.Unpin()
		}
	}
	if d.pin != "" {
		dir := filepath.Dir(d.pin)
		_ = os.Remove(dir)               // PinPath/decap/IFACE
		_ = os.Remove(filepath.Dir(dir)) // PinPath/decap, if no other interface has one
	}
	return d.Close()
}
