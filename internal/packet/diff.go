package packet

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Diff explains how the Ethernet frame got differs from want, for a test
// failure message; it returns "" when they are equal. Each run of differing
// bytes is listed with its offset and the header field it falls in (taken from
// want, or from got past the end of want), followed by a hex dump of the rows
// that differ, want ("-") above got ("+").
func Diff(want, got []byte) string {
	return diff(want, got, frameFields)
}

// DiffIP is [Diff] for IP packets without an Ethernet header.
func DiffIP(want, got []byte) string {
	return diff(want, got, func(b []byte) []field { return ipFields(b, 0, "", 0) })
}

// field is a named byte range of a packet.
type field struct {
	name     string
	off, len int
}

func diff(want, got []byte, layout func([]byte) []field) string {
	n := max(len(want), len(got))
	differs := func(i int) bool {
		return i >= len(want) || i >= len(got) || want[i] != got[i]
	}
	count := 0
	for i := 0; i < n; i++ {
		if differs(i) {
			count++
		}
	}
	if count == 0 {
		return ""
	}
	wf, gf := layout(want), layout(got)
	name := func(i int) string {
		if i < len(want) {
			return fieldName(wf, i)
		}
		return fieldName(gf, i)
	}

	var s strings.Builder
	fmt.Fprintf(&s, "%d of %d bytes differ (want %d bytes, got %d)\n", count, n, len(want), len(got))
	for i := 0; i < n; {
		if !differs(i) {
			i++
			continue
		}
		start, nm := i, name(i)
		for i < n && differs(i) && name(i) == nm {
			i++
		}
		loc := fmt.Sprintf("0x%04x", start)
		if i-start > 1 {
			loc = fmt.Sprintf("0x%04x-0x%04x", start, i-1)
		}
		fmt.Fprintf(&s, "  %-13s %-24s want %s  got %s\n", loc, nm, hexRun(want, start, i), hexRun(got, start, i))
	}
	s.WriteString("      ")
	for c := 0; c < 16; c++ {
		fmt.Fprintf(&s, " %02x", c)
	}
	s.WriteByte('\n')
	for row := 0; row < n; row += 16 {
		end := min(row+16, n)
		rowDiffers := false
		for i := row; i < end; i++ {
			rowDiffers = rowDiffers || differs(i)
		}
		if !rowDiffers {
			continue
		}
		dumpRow(&s, "-", want, row, end)
		dumpRow(&s, "+", got, row, end)
		marks := []byte(strings.Repeat(" ", 6+3*(end-row)))
		for i := row; i < end; i++ {
			if differs(i) {
				p := 6 + 3*(i-row)
				marks[p+1], marks[p+2] = '^', '^'
			}
		}
		s.WriteString(strings.TrimRight(string(marks), " ") + "\n")
	}
	return s.String()
}

func dumpRow(s *strings.Builder, sign string, b []byte, row, end int) {
	fmt.Fprintf(s, "%s%04x ", sign, row)
	for i := row; i < end; i++ {
		if i < len(b) {
			fmt.Fprintf(s, " %02x", b[i])
		} else {
			s.WriteString(" --")
		}
	}
	s.WriteByte('\n')
}

// hexRun formats b[start:end] in hex, "-" for bytes past the end, and shortens
// long runs.
func hexRun(b []byte, start, end int) string {
	const maxShown = 16
	var s strings.Builder
	for i := start; i < end && i < start+maxShown; i++ {
		if i < len(b) {
			fmt.Fprintf(&s, "%02x", b[i])
		} else {
			s.WriteString("--")
		}
	}
	if end-start > maxShown {
		fmt.Fprintf(&s, "… (%d bytes)", end-start)
	}
	return s.String()
}

func fieldName(fields []field, i int) string {
	// Later fields are nested deeper; the last match is the most specific.
	name := "trailer"
	for _, f := range fields {
		if i >= f.off && i < f.off+f.len {
			name = f.name
		}
	}
	return name
}

// frameFields names the fields of an Ethernet frame as far as it parses.
func frameFields(b []byte) []field {
	var fs []field
	add := func(name string, off, n int) bool {
		if off+n > len(b) {
			return false
		}
		fs = append(fs, field{name, off, n})
		return true
	}
	if !add("eth.dst", 0, 6) || !add("eth.src", 6, 6) {
		return fs
	}
	off := 12
	for tags := 0; tags < 2 && off+2 <= len(b); tags++ {
		et := binary.BigEndian.Uint16(b[off:])
		if et != EtherTypeVLAN && et != EtherTypeQinQ {
			break
		}
		add("vlan.tpid", off, 2)
		if !add("vlan.tci", off+2, 2) {
			return fs
		}
		off += 4
	}
	if !add("eth.type", off, 2) {
		return fs
	}
	et := binary.BigEndian.Uint16(b[off:])
	if et != EtherTypeIPv4 && et != EtherTypeIPv6 {
		add("eth.payload", off+2, len(b)-off-2)
		return fs
	}
	return append(fs, ipFields(b, off+2, "", 0)...)
}

// ipFields names the fields of the IP packet at b[off:], prefix marking how
// deeply it is nested.
func ipFields(b []byte, off int, prefix string, depth int) []field {
	var fs []field
	add := func(name string, o, n int) {
		if n > 0 && o < len(b) {
			fs = append(fs, field{prefix + name, o, min(n, len(b)-o)})
		}
	}
	if off >= len(b) || depth > maxNesting {
		return nil
	}
	var proto uint8
	var l4, end int
	switch b[off] >> 4 {
	case 4:
		add("ipv4.version_ihl", off, 1)
		add("ipv4.tos", off+1, 1)
		add("ipv4.total_length", off+2, 2)
		add("ipv4.id", off+4, 2)
		add("ipv4.flags_fragoff", off+6, 2)
		add("ipv4.ttl", off+8, 1)
		add("ipv4.protocol", off+9, 1)
		add("ipv4.checksum", off+10, 2)
		add("ipv4.src", off+12, 4)
		add("ipv4.dst", off+16, 4)
		if off+20 > len(b) {
			return fs
		}
		hl := int(b[off]&0xf) * 4
		add("ipv4.options", off+20, hl-20)
		proto, l4 = b[off+9], off+max(hl, 20)
		end = min(off+int(binary.BigEndian.Uint16(b[off+2:])), len(b))
		if binary.BigEndian.Uint16(b[off+6:])&0x1fff != 0 {
			add("ipv4.fragment", l4, end-l4)
			return fs
		}
	case 6:
		add("ipv6.version_class_flow", off, 4)
		add("ipv6.payload_length", off+4, 2)
		add("ipv6.next_header", off+6, 1)
		add("ipv6.hop_limit", off+7, 1)
		add("ipv6.src", off+8, 16)
		add("ipv6.dst", off+24, 16)
		if off+40 > len(b) {
			return fs
		}
		end = min(off+40+int(binary.BigEndian.Uint16(b[off+4:])), len(b))
		proto, l4 = b[off+6], off+40
		for i := 0; l4+8 <= end; i++ {
			var n int
			var name string
			switch proto {
			case ProtoHopByHop:
				name, n = "hop_by_hop", (int(b[l4+1])+1)*8
			case ProtoRouting:
				name, n = "routing", (int(b[l4+1])+1)*8
			case ProtoDstOpts:
				name, n = "dst_opts", (int(b[l4+1])+1)*8
			case ProtoFragment:
				name, n = "fragment", 8
			case ProtoAH:
				name, n = "ah", (int(b[l4+1])+2)*4
			}
			if n == 0 {
				break
			}
			add(fmt.Sprintf("ipv6.ext[%d].%s", i, name), l4, n)
			proto, l4 = b[l4], l4+n
			if name == "fragment" && binary.BigEndian.Uint16(b[l4-6:])&0xfff8 != 0 {
				add("ipv6.fragment", l4, end-l4)
				return fs
			}
		}
	default:
		add("ip.unknown_version", off, len(b)-off)
		return fs
	}
	if end < l4 {
		end = l4
	}
	switch proto {
	case ProtoTCP:
		add("tcp.src_port", l4, 2)
		add("tcp.dst_port", l4+2, 2)
		add("tcp.seq", l4+4, 4)
		add("tcp.ack", l4+8, 4)
		add("tcp.data_offset", l4+12, 1)
		add("tcp.flags", l4+13, 1)
		add("tcp.window", l4+14, 2)
		add("tcp.checksum", l4+16, 2)
		add("tcp.urgent", l4+18, 2)
		if l4+13 <= len(b) {
			hl := max(int(b[l4+12]>>4)*4, 20)
			add("tcp.options", l4+20, hl-20)
			add("tcp.payload", l4+hl, end-l4-hl)
		}
	case ProtoUDP:
		add("udp.src_port", l4, 2)
		add("udp.dst_port", l4+2, 2)
		add("udp.length", l4+4, 2)
		add("udp.checksum", l4+6, 2)
		add("udp.payload", l4+8, end-l4-8)
	case ProtoICMP, ProtoICMPv6:
		name := "icmp"
		if proto == ProtoICMPv6 {
			name = "icmpv6"
		}
		add(name+".type", l4, 1)
		add(name+".code", l4+1, 1)
		add(name+".checksum", l4+2, 2)
		add(name+".rest", l4+4, 4)
		add(name+".body", l4+8, end-l4-8)
	case ProtoIPIP, ProtoIPv6:
		fs = append(fs, ipFields(b[:end], l4, prefix+"inner.", depth+1)...)
	default:
		add(fmt.Sprintf("proto%d.payload", proto), l4, end-l4)
	}
	return fs
}
