package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/xdplb/xdplb/xdp"
)

// errDecapNoAllow is the answer to attaching the decap program without
// saying whom to trust: an open decapsulator lets anyone who reaches the
// backend inject packets with any inner source.
const errDecapNoAllow = "decap: --allow is required: give the prefixes of the load balancers' encap sources (encap.sourceIPv4, encap.sourceIPv6; repeat --allow for each), or --allow-any to decapsulate from every source"

// stringList is a flag that may be repeated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// parseAllow reads the values of --allow: prefixes without host bits, or
// single addresses.
func parseAllow(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range values {
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			if p, err = netip.ParsePrefix(s); err != nil {
				return nil, usageError{fmt.Sprintf("decap: --allow %q: want an IPv4 or IPv6 prefix or address", s)}
			}
			if m := p.Masked(); m != p {
				return nil, usageError{fmt.Sprintf("decap: --allow %q: host bits are set (the prefix is %s)", s, m)}
			}
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, usageError{fmt.Sprintf("decap: --allow %q: want an IPv4 or IPv6 prefix or address", s)}
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	}
	return out, nil
}

// formatAllowed words the allowed set for a person.
func formatAllowed(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none (every encapsulated packet is dropped)"
	}
	if slices.Equal(ps, xdp.AnySource) {
		return "any"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}

func runDecap(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("decap", flag.ContinueOnError)
	iface := fs.String("interface", "", "interface to decapsulate on (required)")
	detach := fs.Bool("detach", false, "remove the program from the interface")
	counters := fs.Bool("counters", false, "print the program's counters")
	mode := fs.String("mode", "auto", "attach mode: auto (native, else generic), native or generic")
	pin := fs.String("pin-path", xdp.DefaultPinPath, "bpffs directory for pinned objects")
	addrs := fs.String("addresses", "", "comma-separated outer destinations to decapsulate (default: the interface's addresses)")
	var allowFlag stringList
	fs.Var(&allowFlag, "allow", "outer source `PREFIX` (or address) trusted to encapsulate to this host, such as the load balancers' encap source (repeat for each; replaces the set of an earlier attachment)")
	allowAny := fs.Bool("allow-any", false, "decapsulate from every outer source (anyone who reaches this host can then inject packets with any inner source)")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb decap --interface IFACE (--allow PREFIX... | --allow-any) [flags]\n"+
			"       xdplb decap --interface IFACE (--detach | --counters) [flags]\n\n"+
			"Attaches the program that strips IPIP/IP6IP6 addressed to this host from the\n"+
			"allowed outer sources and passes the inner packet to the stack: the backend side\n"+
			"of an IPIP VIP. Encapsulated packets from other sources are dropped and counted.\n"+
			"The attachment is pinned and stays after the command exits.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	if *iface == "" {
		return usageError{"decap: --interface is required"}
	}
	allow, err := parseAllow(allowFlag)
	if err != nil {
		return err
	}
	attach := !*detach && !*counters
	switch {
	case len(allow) > 0 && *allowAny:
		return usageError{"decap: --allow and --allow-any exclude each other"}
	case !attach && (len(allow) > 0 || *allowAny):
		return usageError{"decap: --allow and --allow-any are for attaching, not with --detach or --counters"}
	case attach && len(allow) == 0 && !*allowAny:
		return usageError{errDecapNoAllow}
	}
	if *allowAny {
		allow = xdp.AnySource
	}
	opts := xdp.DecapOptions{PinPath: *pin, Mode: xdp.AttachMode(*mode), Allow: allow}
	if *addrs != "" {
		for _, s := range strings.Split(*addrs, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return usageError{fmt.Sprintf("decap: --addresses: %v", err)}
			}
			opts.Addrs = append(opts.Addrs, a)
		}
	}
	d, err := xdp.OpenDecap(*iface, opts)
	if err != nil {
		return err
	}
	switch {
	case *detach:
		if err := d.Detach(); err != nil {
			return err
		}
		fmt.Fprintf(out, "decap detached from %s\n", *iface)
		return nil
	case *counters:
		cs, err := d.Counters()
		if err != nil {
			d.Close()
			return err
		}
		for _, c := range cs {
			fmt.Fprintf(out, "%-24s %d\n", c.Name, c.Value)
		}
		return d.Close()
	}
	allowed, err := d.Allowed()
	if err != nil {
		d.Close()
		return err
	}
	a := d.Attachment()
	verb := "attached to"
	if a.Reused {
		verb = "updated on"
	}
	fmt.Fprintf(out, "decap %s %s (ifindex %d, %s mode)\n", verb, a.Interface, a.IfIndex, a.Mode)
	fmt.Fprintf(out, "allowed outer sources: %s\n", formatAllowed(allowed))
	return d.Close()
}
