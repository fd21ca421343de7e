package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
)

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitStatus ends the command with an exit status of its own, printing msg
// (when not empty) to stderr: plan says with it whether anything changes.
type exitStatus struct {
	code int
	msg  string
}

func (e exitStatus) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.msg
}

type command struct {
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

var commands = map[string]command{
	"run":     {"run the appliance (what systemd starts)", runDaemon},
	"check":   {"validate a configuration file without touching the host", runCheck},
	"detach":  {"remove everything xdplb put on the host (programs, pinned maps)", runDetach},
	"decap":   {"attach, detach or read the backend-side IPIP decapsulation program", runDecap},
	"demo":    {"run the appliance in a namespace topology with traffic and counters (root)", runDemo},
	"version": {"print the version", runVersion},

	"status":    {"show the running daemon: config, last reload, interfaces, counts", runStatus},
	"vips":      {"list the VIPs with their backends, health and table shares", runVIPs},
	"backends":  {"list the backends with state, slots, next hop and counters", runBackends},
	"conntrack": {"list the pinned flows (--vip VIP to filter)", runConntrack},
	"maglev":    {"show a VIP's Maglev table: slots per backend", runMaglev},
	"explain":   {"say which backend a client's packet goes to, and why", runExplain},
	"reload":    {"make the daemon reload its configuration file (--plan: only say what would change)", runReload},
	"monitor":   {"stream the datapath's events: drops with their reason, pins, ICMP", runMonitor},
	"top":       {"a live view of packets, bits, new flows and drops per second, per VIP and backend", runTop},
	"plan":      {"say what applying a configuration file would change, without applying it", runPlan},
	"bgp":       {"show the BGP speaker: routes, peers, session states, prefixes", runBGP},
	"drain":     {"withdraw (or tag) the BGP routes and wait until no new flows arrive", runDrain},
	"undrain":   {"announce the BGP routes again after a drain", runUndrain},
	"announce":  {"set or show the L2 announcers' state (active or standby) in external mode", runAnnounce},
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return nil
	}
	c, ok := commands[args[0]]
	if !ok {
		usage(os.Stderr)
		return usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	return c.run(ctx, args[1:], os.Stdout)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: xdplb COMMAND [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\n'xdplb COMMAND -h' describes a command's flags.")
}

// version is set at link time (-ldflags "-X main.version=…"); otherwise the
// module build information says what was built.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			v = strings.TrimSpace(v + " " + s.Value)
		}
	}
	return v
}

func runVersion(_ context.Context, _ []string, out io.Writer) error {
	_, err := fmt.Fprintln(out, "xdplb", versionString())
	return err
}
