package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// Proto is a transport protocol of a service.
type Proto uint8

// Protocols a service can have.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// Mode is how a VIP's packets reach its backends.
type Mode uint8

// Forwarding modes.
const (
	ModeDSRL2   Mode = Mode(lbXdplbModeMODE_DSR_L2)
	ModeDSRIPIP Mode = Mode(lbXdplbModeMODE_DSR_IPIP)
	ModeSNAT    Mode = Mode(lbXdplbModeMODE_SNAT)
)

func (m Mode) String() string {
	switch m {
	case ModeDSRL2:
		return "dsr-l2"
	case ModeDSRIPIP:
		return "dsr-ipip"
	case ModeSNAT:
		return "snat"
	}
	return "mode" + strconv.Itoa(int(m))
}

// VIPKey names a service: address, port (0: every port) and protocol.
type VIPKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (k VIPKey) String() string {
	return netip.AddrPortFrom(k.Addr, k.Port).String() + "/" + k.Proto.String()
}

// ParseVIPKey parses "ADDR:PORT/PROTO" as printed by VIPKey.String.
func ParseVIPKey(s string) (VIPKey, error) {
	ap, proto, ok := strings.Cut(s, "/")
	if !ok {
		return VIPKey{}, fmt.Errorf("%q: want ADDRESS:PORT/PROTOCOL", s)
	}
	addrPort, err := netip.ParseAddrPort(ap)
	if err != nil {
		return VIPKey{}, fmt.Errorf("%q: %w", s, err)
	}
	k := VIPKey{Addr: addrPort.Addr().Unmap(), Port: addrPort.Port()}
	switch strings.ToLower(proto) {
	case "tcp":
		k.Proto = TCP
	case "udp":
		k.Proto = UDP
	default:
		return VIPKey{}, fmt.Errorf("%q: protocol %q is neither tcp nor udp", s, proto)
	}
	return k, nil
}

// VIP is the datapath's view of a service.
type VIP struct {
	Mode Mode
	// HashSeed seeds the flow hash; the same on every appliance of a fleet.
	HashSeed uint32
}

type addrKey struct{ addr netip.Addr }

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

func addr16(a netip.Addr) [16]byte {
	var b [16]byte
	if a.Is4() {
		v := a.As4()
		copy(b[:], v[:])
		return b
	}
	return a.As16()
}

func addrFrom16(b [16]byte, fam uint8) netip.Addr {
	if fam == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func (k VIPKey) bpf() lbVipKey {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Port)
	return lbVipKey{Addr: addr16(k.Addr), Port: binary.LittleEndian.Uint16(port[:]), Proto: uint8(k.Proto), Family: family(k.Addr)}
}

func vipKeyFrom(k lbVipKey) VIPKey {
	return VIPKey{Addr: addrFrom16(k.Addr, k.Family), Port: bits.ReverseBytes16(k.Port), Proto: Proto(k.Proto)}
}

func vipAddrKey(a netip.Addr) lbVipAddr {
	return lbVipAddr{Addr: addr16(a), Family: family(a)}
}

func validVIPKey(k VIPKey) error {
	if !k.Addr.IsValid() || k.Addr.Is4In6() {
		return fmt.Errorf("VIP %s: address must be IPv4 or IPv6", k)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("VIP %s: protocol must be tcp or udp", k)
	}
	return nil
}

// recover rebuilds the allocators and the filter from the (pinned) maps.
func (d *Datapath) recover() error {
	var (
		k  lbVipKey
		m  lbVipMeta
		it = d.objs.Vips.Iterate()
	)
	for it.Next(&k, &m) {
		key := vipKeyFrom(k)
		st := &vipState{meta: m}
		d.vips[key] = st
		d.vipIDs.markUsed(m.VipId)
		var err error
		if m.TableIdx != 0 {
			if st.table, err = d.openTable(m.TableIdx); err != nil {
				return fmt.Errorf("VIP %s: %w", key, err)
			}
		}
		if m.PrevIdx != 0 && m.PrevIdx != m.TableIdx {
			if st.old, err = d.openTable(m.PrevIdx); err != nil {
				return fmt.Errorf("VIP %s: %w", key, err)
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading pinned VIPs: %w", err)
	}
	// Slots no VIP references (a crash between writes) are released.
	var idx uint32
	var id ebpf.MapID
	tit := d.objs.MaglevTables.Iterate()
	for tit.Next(&idx, &id) {
		if !d.tables.used[idx] && id != d.emptyID {
			d.tables.markUsed(idx)
			d.freed = append(d.freed, idx)
		}
	}
	if err := d.flushFreed(); err != nil {
		return err
	}
	if err := d.recoverBackends(); err != nil {
		return err
	}
	d.recoverIndex()
	var a lbVipAddr
	var info lbVipAddrInfo
	ait := d.objs.VipAddrs.Iterate()
	for ait.Next(&a, &info) {
		d.addrs[addrKey{addrFrom16(a.Addr, a.Family)}] = 0
	}
	if err := ait.Err(); err != nil {
		return fmt.Errorf("reading pinned VIP addresses: %w", err)
	}
	for key := range d.vips {
		d.addrs[addrKey{key.Addr}]++
	}
	for ak, n := range d.addrs {
		if n == 0 { // an address left without service
			_ = d.objs.VipAddrs.Delete(vipAddrKey(ak.addr))
			delete(d.addrs, ak)
			continue
		}
		d.filter[FilterBit(ak.addr)]++
	}
	if err := d.recoverNAT(); err != nil {
		return err
	}
	if err := d.writeFilter(); err != nil {
		return err
	}
	// VIPs a release before VIP_F_SNAT_SOURCE left at a SNAT source's
	// address get the flag before this program is attached.
	return d.setSNATAddrs(natSources(d.natConfig))
}

func (d *Datapath) writeFilter() error {
	words := make([]uint64, vipFilterWords)
	for bit := range d.filter {
		words[bit/64] |= 1 << (bit % 64)
	}
	keys := make([]uint32, vipFilterWords)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := d.objs.VipFilter.BatchUpdate(keys, words, nil); err != nil {
		return fmt.Errorf("writing the VIP filter: %w", err)
	}
	return nil
}

func (d *Datapath) setFilterBit(a netip.Addr, on bool) error {
	bit := FilterBit(a)
	if on {
		d.filter[bit]++
	} else if d.filter[bit]--; d.filter[bit] <= 0 {
		delete(d.filter, bit)
	}
	var word uint64
	for b := range d.filter {
		if b/64 == bit/64 {
			word |= 1 << (b % 64)
		}
	}
	return d.objs.VipFilter.Put(bit/64, word)
}

// UpsertVIP adds a service or changes its mode or seed, keeping its table.
// A new service has no table (its packets are dropped, counted no_backend)
// until SetTable gives it one.
func (d *Datapath) UpsertVIP(k VIPKey, v VIP) error {
	if err := validVIPKey(k); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vips[k]
	if ok {
		m := st.meta
		m.Mode = uint8(v.Mode)
		m.HashSeed = v.HashSeed
		if m == st.meta {
			return nil
		}
		if err := d.writeMeta(k, st, m); err != nil {
			return fmt.Errorf("updating VIP %s: %w", k, err)
		}
		return nil
	}
	id, err := d.vipIDs.get()
	if err != nil {
		return fmt.Errorf("adding VIP %s: %w", k, err)
	}
	// The id may have counted another VIP before: start from zero.
	if err := d.objs.VipStats.Put(id, d.zeroStats); err != nil {
		d.vipIDs.put(id)
		return fmt.Errorf("adding VIP %s: resetting counters: %w", k, err)
	}
	if d.addrs[addrKey{k.Addr}] == 0 {
		info := lbVipAddrInfo{Flags: uint32(lbXdplbAddrFlagsADDR_F_ECHO)}
		if err := d.objs.VipAddrs.Put(vipAddrKey(k.Addr), &info); err != nil {
			d.vipIDs.put(id)
			return fmt.Errorf("adding VIP address %s: %w", k.Addr, err)
		}
		if err := d.setFilterBit(k.Addr, true); err != nil {
			return fmt.Errorf("adding VIP address %s: %w", k.Addr, err)
		}
	}
	d.addrs[addrKey{k.Addr}]++
	m := lbVipMeta{VipId: id, Mode: uint8(v.Mode), HashSeed: v.HashSeed, Flags: d.snatFlag(k.Addr, 0)}
	if err := d.objs.Vips.Update(k.bpf(), &m, ebpf.UpdateNoExist); err != nil {
		d.vipIDs.put(id)
		d.releaseAddr(k.Addr)
		return fmt.Errorf("adding VIP %s: %w", k, err)
	}
	d.vips[k] = &vipState{meta: m}
	return nil
}

func (d *Datapath) releaseAddr(a netip.Addr) {
	ak := addrKey{a}
	if d.addrs[ak]--; d.addrs[ak] > 0 {
		return
	}
	delete(d.addrs, ak)
	_ = d.setFilterBit(a, false)
	_ = d.objs.VipAddrs.Delete(vipAddrKey(a))
}

// DeleteVIP removes a service and its tables.
func (d *Datapath) DeleteVIP(k VIPKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.vips[k]
	if !ok {
		return fmt.Errorf("deleting VIP %s: %w", k, ErrNotFound)
	}
	d.unindex(k, st)
	if err := d.objs.Vips.Delete(k.bpf()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("deleting VIP %s: %w", k, err)
	}
	delete(d.vips, k)
	d.releaseAddr(k.Addr)
	// No packet finds the tables any more; their slots in maglev_tables are
	// released by the next flush (Maintain).
	d.releaseTable(st.table)
	d.releaseTable(st.old)
	d.vipIDs.put(st.meta.VipId)
	return nil
}

// ErrNotFound is returned for a VIP or backend the datapath does not have.
var ErrNotFound = errors.New("not found")

// VIPInfo describes a service as the datapath holds it.
type VIPInfo struct {
	Key        VIPKey
	ID         uint32
	Mode       Mode
	HashSeed   uint32
	TableSize  int
	Transition time.Duration // time left of the grace period, 0 if none
}

// VIPs lists the services.
func (d *Datapath) VIPs() []VIPInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.nowMono()
	out := make([]VIPInfo, 0, len(d.vips))
	for k, st := range d.vips {
		vi := VIPInfo{Key: k, ID: st.meta.VipId, Mode: Mode(st.meta.Mode), HashSeed: st.meta.HashSeed, TableSize: int(st.meta.TableSize)}
		if end := time.Duration(st.meta.TransitionEnd); end > now {
			vi.Transition = end - now
		}
		out = append(out, vi)
	}
	return out
}
