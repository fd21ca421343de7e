package soak

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// The health check of every service: a backend whose listener stops is
// down after 2 failed checks (about 2–3 s), and up again after 2 good ones.
// The timeout is generous: the machine is shared and may be slow, and a
// check that times out under load would take a backend down by itself.
const healthCheck = "{type: tcp, interval: 1s, timeout: 700ms, rise: 2, fall: 2}"

// backend is one backend host of the topology.
type backend struct {
	name     string
	v4, v6   netip.Addr
	spareNow bool // not in the main services
}

// member is a backend in a service, with its weight.
type member struct {
	name   string
	weight int
}

// service is one service of the configuration.
type service struct {
	name    string
	vip     netip.Addr
	encap   string // "none" or "ipip"
	churn   bool   // a service the soak adds and removes
	members []member
}

func (s *service) vipPort() string { return netip.AddrPortFrom(s.vip, port).String() }

func (s *service) has(name string) bool {
	return slices.ContainsFunc(s.members, func(m member) bool { return m.name == name })
}

// files are where the soak's appliance keeps things.
type files struct {
	Socket, State, BPF, Metrics string
}

// configYAML is the configuration file of services over backends.
func configYAML(f files, lb4, lb6 netip.Addr, services []*service, backends map[string]*backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, `interfaces:
  - name: eth0
maglev:
  seed: "eGRwbGItc29hay1zZWVkIQ=="
  tableSize: 1021
conntrack:
  maxFlows: 65536
encap:
  sourceIPv4: %s
  sourceIPv6: %s
services:
`, lb4, lb6)
	for _, s := range services {
		fmt.Fprintf(&b, "  - name: %s\n    address: %s\n    protocol: tcp\n    ports: [%d]\n    mode: dsr\n    encap: %s\n    healthCheck: %s\n    backends:\n",
			s.name, s.vip, port, s.encap, healthCheck)
		for _, m := range s.members {
			addr := backends[m.name].v4
			if s.vip.Is6() {
				addr = backends[m.name].v6
			}
			fmt.Fprintf(&b, "      - {address: %s, weight: %d}\n", addr, m.weight)
		}
	}
	fmt.Fprintf(&b, "metrics:\n  listen: \"%s\"\npaths:\n  socket: %s\n  state: %s\n  bpf: %s\n", f.Metrics, f.Socket, f.State, f.BPF)
	return b.String()
}

// badConfigs turn a good configuration into one the daemon must refuse,
// each in its own way; the soak cycles through them.
var badConfigs = []struct {
	what string
	edit func(good string) string
}{
	{"an unknown protocol", func(s string) string { return strings.Replace(s, "protocol: tcp", "protocol: tcpp", 1) }},
	{"an unknown key", func(s string) string {
		return strings.Replace(s, "    mode: dsr\n", "    mode: dsr\n    weigth: 3\n", 1)
	}},
	{"a YAML syntax error", func(s string) string { return strings.Replace(s, "ports: [80]", "ports: [80", 1) }},
	{"a backend address that is no address", func(s string) string {
		return strings.Replace(s, "{address: 198.18.0.", "{address: 198.18.0.3", 1)
	}},
	{"two services with one name", func(s string) string { return strings.Replace(s, "name: l2-v6", "name: l2-v4", 1) }},
	{"a health check timeout longer than its interval", func(s string) string { return strings.Replace(s, "timeout: 700ms", "timeout: 7s", 1) }},
}

// writeAtomically replaces path as editors do: a new file renamed over it.
func writeAtomically(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
