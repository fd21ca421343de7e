package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/xdplb/xdplb/xdp"
)

func runDecap(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("decap", flag.ContinueOnError)
	iface := fs.String("interface", "", "interface to decapsulate on (required)")
	detach := fs.Bool("detach", false, "remove the program from the interface")
	counters := fs.Bool("counters", false, "print the program's counters")
	mode := fs.String("mode", "auto", "attach mode: auto (native, else generic), native or generic")
	pin := fs.String("pin-path", xdp.DefaultPinPath, "bpffs directory for pinned objects")
	addrs := fs.String("addresses", "", "comma-separated outer destinations to decapsulate (default: the interface's addresses)")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb decap --interface IFACE [--detach | --counters] [flags]\n\n"+
			"Attaches the program that strips IPIP/IP6IP6 addressed to this host and passes the\n"+
			"inner packet to the stack: the backend side of an IPIP VIP. The attachment is\n"+
			"pinned and stays after the command exits.\n\nflags:")
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
	opts := xdp.DecapOptions{PinPath: *pin, Mode: xdp.AttachMode(*mode)}
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
	a := d.Attachment()
	verb := "attached to"
	if a.Reused {
		verb = "updated on"
	}
	fmt.Fprintf(out, "decap %s %s (ifindex %d, %s mode)\n", verb, a.Interface, a.IfIndex, a.Mode)
	return d.Close()
}
