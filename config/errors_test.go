package config

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// head is the smallest valid file: every case below appends to it or
// replaces it, so its lines are 1 to 4.
const head = `interfaces:
  - name: eth0
maglev:
  seed: 7sVbCXnvcRBFqlPEkQJsHQ==
`

// svc is a valid service block, to append to head under "services:".
const svc = `  - name: web
    address: 198.18.10.10
    protocol: tcp
    ports: [80]
    mode: dsr
`

// errorLines parses the file and returns its errors, one string per error.
func errorLines(t *testing.T, file string) []string {
	t.Helper()
	c, err := Parse("xdplb.yaml", []byte(file))
	if err == nil {
		if c == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		return nil
	}
	if c != nil {
		t.Error("Parse returned a config together with an error")
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("Parse returned %T, want ErrorList: %v", err, err)
	}
	return strings.Split(list.Error(), "\n")
}

// errorCases are files with problems and the exact errors they give. The
// fuzz test starts from them too.
var errorCases = []struct {
	name string
	file string
	want []string
}{
	// Decoding: unknown keys.
	{
		name: "unknown top-level key",
		file: head + "servics: []\n",
		want: []string{`servics: unknown key; did you mean services? (line 5, column 1)`},
	},
	{
		name: "unknown top-level key, nothing close",
		file: head + "bgp: {}\n",
		want: []string{`bgp: unknown key (line 5, column 1)`},
	},
	{
		name: "unknown nested key, a prefix of one",
		file: head + `services:
  - name: web
    address: 198.18.10.10
    prot: tcp
    protocol: tcp
    ports: [80]
    mode: dsr
`,
		want: []string{`services[0].prot: unknown key; did you mean protocol? (line 8, column 5)`},
	},
	{
		name: "unknown nested key, a typo",
		file: head + "services:\n" + svc + "    backends:\n      - {adress: 198.18.1.1}\n",
		want: []string{
			`services[0].backends[0].address: missing (line 12, column 9)`,
			`services[0].backends[0].adress: unknown key; did you mean address? (line 12, column 10)`,
		},
	},
	{
		name: "key given twice",
		file: head + "services:\n" + svc + "    mode: dsr\n",
		want: []string{`services[0].mode: duplicate key; first given at line 10 (line 11, column 5)`},
	},
	{
		name: "merge key",
		file: head + "services:\n  - <<: {name: web}\n",
		want: []string{
			`services[0].<<: merge keys are not supported (line 6, column 5)`,
			`services[0]: a service needs an address or a pool (line 6, column 5)`,
			`services[0].name: missing (line 6, column 5)`,
			`services[0].protocol: missing (line 6, column 5)`,
			`services[0].ports: missing (line 6, column 5)`,
			`services[0].mode: missing (line 6, column 5)`,
		},
	},

	// Decoding: wrong types.
	{
		name: "string for a list",
		file: head + "services:\n" + strings.Replace(svc, "[80]", `"80"`, 1),
		want: []string{`services[0].ports: want a list, got "80" (line 9, column 12)`},
	},
	{
		name: "list for a string",
		file: head + "services:\n" + strings.Replace(svc, "name: web", "name: [web]", 1),
		want: []string{
			`services[0].name: want a string, got a list (line 6, column 11)`,
		},
	},
	{
		name: "number for a bool",
		file: head + "services:\n" + svc + "    announce: 1\n",
		want: []string{`services[0].announce: want true or false, got 1 (line 11, column 15)`},
	},
	{
		name: "quoted string for a number",
		file: head + "services:\n" + svc + "    tableSize: \"4093\"\n",
		want: []string{`services[0].tableSize: want an integer, got "4093" (line 11, column 16)`},
	},
	{
		name: "map for a list",
		file: head + "pools: {name: p}\n",
		want: []string{`pools: want a list, got a map (line 5, column 8)`},
	},
	{
		name: "not a map at the top",
		file: "- interfaces\n",
		want: []string{`want a map, got a list (line 1, column 1)`},
	},

	// Decoding: bad values.
	{
		name: "bad IP, as in the style guide",
		file: head + `services:
  - {name: a, address: 198.18.0.1, protocol: tcp, ports: [1], mode: dsr}
  - {name: b, address: 198.18.0.2, protocol: tcp, ports: [1], mode: dsr}
  - name: c
    address: 198.18.0.3
    protocol: tcp
    ports: [80]
    mode: dsr
    backends:
      - address: 10.0.0.300
`,
		want: []string{`services[2].backends[0].address: "10.0.0.300" is not an IP address (line 14, column 18)`},
	},
	{
		name: "IP with a zone",
		file: head + "services:\n" + strings.Replace(svc, "198.18.10.10", "fe80::1%eth0", 1),
		want: []string{`services[0].address: "fe80::1%eth0" has an IPv6 zone, which is not allowed here (line 7, column 14)`},
	},
	{
		name: "IPv4-mapped IPv6",
		file: head + "services:\n" + strings.Replace(svc, "198.18.10.10", "::ffff:198.18.10.10", 1),
		want: []string{`services[0].address: "::ffff:198.18.10.10" is an IPv4-mapped IPv6 address; write 198.18.10.10 (line 7, column 14)`},
	},
	{
		name: "VIP not unicast",
		file: head + "services:\n" + strings.Replace(svc, "198.18.10.10", "0.0.0.0", 1),
		want: []string{`services[0].address: "0.0.0.0" is not a unicast address (line 7, column 14)`},
	},
	{
		name: "seed not base64",
		file: "interfaces:\n  - name: eth0\nmaglev:\n  seed: \"not base64!\"\n",
		want: []string{`maglev.seed: "not base64!" is not base64 (line 4, column 9)`},
	},
	{
		name: "seed of the wrong length",
		file: "interfaces:\n  - name: eth0\nmaglev:\n  seed: c2VlZA==\n",
		want: []string{`maglev.seed: "c2VlZA==" is 4 bytes, want 16 (line 4, column 9)`},
	},
	{
		name: "bad xdpMode",
		file: "interfaces:\n  - name: eth0\n    xdpMode: fast\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n",
		want: []string{`interfaces[0].xdpMode: "fast" is not one of auto, native, generic (line 3, column 14)`},
	},
	{
		name: "interface name too long",
		file: "interfaces:\n  - name: averyveryverylongname\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n",
		want: []string{`interfaces[0].name: "averyveryverylongname" is longer than 15 bytes (line 2, column 11)`},
	},
	{
		name: "interface name empty",
		file: "interfaces:\n  - name: \"\"\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n",
		want: []string{`interfaces[0].name: "" is empty (line 2, column 11)`},
	},
	{
		name: "no interfaces",
		file: "interfaces: []\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n",
		want: []string{`interfaces: at least one interface is required (line 1, column 13)`},
	},
	{
		name: "bad protocol",
		file: head + "services:\n" + strings.Replace(svc, "tcp", "sctp", 1),
		want: []string{`services[0].protocol: "sctp" is not one of tcp, udp (line 8, column 15)`},
	},
	{
		name: "port 70000",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[80, 70000]", 1),
		want: []string{`services[0].ports[1]: 70000 is out of range (1 to 65535, or 0 for every port) (line 9, column 17)`},
	},
	{
		name: "port -1",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[-1]", 1),
		want: []string{`services[0].ports[0]: -1 is out of range (1 to 65535, or 0 for every port) (line 9, column 13)`},
	},
	{
		name: "port listed twice",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[80, 443, 80]", 1),
		want: []string{`services[0].ports[2]: 80 is listed twice (line 9, column 22)`},
	},
	{
		name: "port 0 with others",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[80, 0]", 1),
		want: []string{`services[0].ports[1]: 0 (every port) cannot be combined with other ports (line 9, column 17)`},
	},
	{
		name: "no ports",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[]", 1),
		want: []string{`services[0].ports: at least one port is required; [0] means every port (line 9, column 12)`},
	},
	{
		name: "backend port 0",
		file: head + "services:\n" + svc + "    backends:\n      - {address: 198.18.1.1, port: 0}\n",
		want: []string{`services[0].backends[0].port: 0 is out of range (1 to 65535) (line 12, column 37)`},
	},
	{
		name: "weight 20000",
		file: head + "services:\n" + svc + "    backends:\n      - {address: 198.18.1.1, weight: 20000}\n",
		want: []string{`services[0].backends[0].weight: 20000 is out of range (0 to 10000) (line 12, column 39)`},
	},
	{
		name: "service tableSize 1000",
		file: head + "services:\n" + svc + "    tableSize: 1000\n",
		want: []string{`services[0].tableSize: 1000 is not a prime between 251 and 131071 (line 11, column 16)`},
	},
	{
		name: "maglev tableSize 16383, not a prime",
		file: head + "  tableSize: 16383\n",
		want: []string{`maglev.tableSize: 16383 is not a prime between 251 and 131071 (line 5, column 14)`},
	},
	{
		name: "tableSize a prime out of range",
		file: head + "  tableSize: 131101\n",
		want: []string{`maglev.tableSize: 131101 is not a prime between 251 and 131071 (line 5, column 14)`},
	},
	{
		name: "maxNATFlows 0",
		file: head + "conntrack:\n  maxNATFlows: 0\n",
		want: []string{`conntrack.maxNATFlows: 0 is out of range (1 to 67108864) (line 6, column 16)`},
	},
	{
		name: "maxNATFlows past 2^26",
		file: head + "conntrack:\n  maxNATFlows: 67108865\n",
		want: []string{`conntrack.maxNATFlows: 67108865 is out of range (1 to 67108864) (line 6, column 16)`},
	},
	{
		name: "maxFlows 0 and a bad idleTimeout",
		file: head + "conntrack:\n  maxFlows: 0\n  idleTimeout: 900\n",
		want: []string{
			`conntrack.maxFlows: 0 is out of range (1 to 4294967295) (line 6, column 13)`,
			`conntrack.idleTimeout: 900 is not a duration (such as "15m" or "90s") (line 7, column 16)`,
		},
	},
	{
		name: "encap source of the wrong family",
		file: head + "encap:\n  sourceIPv4: 2001:db8::1\n",
		want: []string{`encap.sourceIPv4: "2001:db8::1" is not an IPv4 address or prefix (line 6, column 15)`},
	},
	{
		name: "encap source prefix too short",
		file: head + "encap:\n  sourceIPv4: 198.18.0.0/15\n  sourceIPv6: 2001:db8::/64\n",
		want: []string{
			`encap.sourceIPv4: "198.18.0.0/15" has 17 host bits; at most 16 may vary (line 6, column 15)`,
			`encap.sourceIPv6: "2001:db8::/64" has 64 host bits; at most 32 may vary (line 7, column 15)`,
		},
	},
	{
		name: "encap source prefix with host bits",
		file: head + "encap:\n  sourceIPv4: 198.18.0.1/24\n",
		want: []string{`encap.sourceIPv4: "198.18.0.1/24" has host bits set; write "198.18.0.0/24" (line 6, column 15)`},
	},
	{
		name: "pool block mixing families",
		file: head + "pools:\n  - name: p\n    blocks:\n      - {start: 198.18.10.1, stop: \"2001:db8::1\"}\n",
		want: []string{`pools[0].blocks[0].stop: "2001:db8::1" is not of the same family as start "198.18.10.1" (line 8, column 36)`},
	},
	{
		name: "pool block backwards",
		file: head + "pools:\n  - name: p\n    blocks:\n      - {start: 198.18.10.9, stop: 198.18.10.1}\n",
		want: []string{`pools[0].blocks[0].stop: "198.18.10.1" comes before start "198.18.10.9" (line 8, column 36)`},
	},
	{
		name: "pool block with cidr and start",
		file: head + "pools:\n  - name: p\n    blocks:\n      - {cidr: 198.18.10.0/24, start: 198.18.10.1}\n",
		want: []string{`pools[0].blocks[0]: a block has either cidr or start and stop, not both (line 8, column 9)`},
	},
	{
		name: "pool block without stop",
		file: head + "pools:\n  - name: p\n    blocks:\n      - start: 198.18.10.1\n",
		want: []string{`pools[0].blocks[0].stop: missing (line 8, column 9)`},
	},
	{
		name: "metrics.listen without a port",
		file: head + "metrics:\n  listen: 127.0.0.1\n",
		want: []string{`metrics.listen: "127.0.0.1" is not a host:port (such as "127.0.0.1:9650" or ":9650") (line 6, column 11)`},
	},
	{
		name: "relative path and overlong socket",
		file: head + "paths:\n  state: var/lib/xdplb\n  socket: /" + strings.Repeat("s", 107) + "\n",
		want: []string{
			`paths.state: "var/lib/xdplb" is not an absolute path (line 6, column 10)`,
			`paths.socket: "/` + strings.Repeat("s", 107) + `" is longer than 107 bytes, the limit for a Unix socket (line 7, column 11)`,
		},
	},
	{
		name: "snat without a source of the service's family",
		file: head + "snat:\n  sources: [\"2001:db8::1\"]\nservices:\n" + strings.Replace(svc, "dsr", "snat", 1),
		want: []string{`services[0].mode: mode snat needs an IPv4 address under snat.sources for 198.18.10.10 (line 12, column 11)`},
	},
	{
		name: "snat with a source of its family",
		file: head + "snat:\n  sources: [198.18.0.1]\nservices:\n" + strings.Replace(svc, "dsr", "snat", 1),
	},
	{
		name: "encap with snat",
		file: head + "snat:\n  sources: [198.18.0.1]\nservices:\n" + strings.Replace(svc, "dsr", "snat", 1) + "    encap: none\n",
		want: []string{
			`services[0].encap: encap applies to mode dsr only, and this service has mode snat (line 13, column 12)`,
		},
	},
	{
		name: "snat backend of the other family",
		file: head + "snat:\n  sources: [198.18.0.1]\nservices:\n" + strings.Replace(svc, "dsr", "snat", 1) + "    backends:\n      - {address: \"2001:db8::5\"}\n",
		want: []string{
			`services[0].backends[0].address: "2001:db8::5" is IPv6 and the service IPv4; mode snat does not translate between families (line 14, column 19)`,
		},
	},
	{
		name: "snat section errors",
		file: head + "snat:\n  sources: [198.18.0.1, 198.18.0.1, 224.0.0.1]\n  ports: 2000-1000\n  timeouts: {tcpEstablished: 0s, udp: often, tcp: 1m}\n  colour: red\n",
		want: []string{
			`snat.sources[1]: "198.18.0.1" is listed twice (line 6, column 25)`,
			`snat.sources[2]: "224.0.0.1" is not a unicast address (line 6, column 37)`,
			`snat.ports: "2000-1000" is not a port range (such as "1024-32767", low to high, 1 to 65535) (line 7, column 10)`,
			`snat.timeouts.tcpEstablished: "0s" is shorter than 1s (line 8, column 30)`,
			`snat.timeouts.udp: "often" is not a duration (such as "15m" or "90s") (line 8, column 39)`,
			`snat.timeouts.tcp: unknown key (line 8, column 46)`,
			`snat.colour: unknown key (line 9, column 3)`,
		},
	},
	{
		name: "missing service fields",
		file: head + "services:\n  - name: web\n    address: 198.18.10.10\n",
		want: []string{
			`services[0].protocol: missing (line 6, column 5)`,
			`services[0].ports: missing (line 6, column 5)`,
			`services[0].mode: missing (line 6, column 5)`,
		},
	},
	{
		name: "service name with a space",
		file: head + "services:\n" + strings.Replace(svc, "name: web", "name: my web", 1),
		want: []string{`services[0].name: "my web" may hold only letters, digits and - _ . / (line 6, column 11)`},
	},

	// Validation.
	{
		name: "duplicate service names",
		file: head + "services:\n" + svc + strings.Replace(svc, "198.18.10.10", "198.18.10.11", 1),
		want: []string{`services[1].name: "web" is already used by services[0] (line 11, column 11)`},
	},
	{
		name: "VIP:port/protocol twice",
		file: head + "services:\n" + svc + strings.NewReplacer("web", "web2", "[80]", "[443, 80]").Replace(svc),
		want: []string{`services[1].ports[1]: 198.18.10.10:80/tcp is already defined by services[0] ("web") (line 14, column 18)`},
	},
	{
		name: "same port, other protocol or address, is fine",
		file: head + "services:\n" + svc +
			strings.NewReplacer("web", "dns", "tcp", "udp").Replace(svc) +
			strings.NewReplacer("web", "web2", "198.18.10.10", "198.18.10.11").Replace(svc),
		want: nil,
	},
	{
		name: "wildcard after a specific port",
		file: head + "services:\n" + svc + strings.NewReplacer("web", "all", "[80]", "[0]").Replace(svc),
		want: []string{`services[1].ports[0]: 198.18.10.10:*/tcp overlaps 198.18.10.10:80/tcp of services[0] ("web") (line 14, column 13)`},
	},
	{
		name: "specific port after a wildcard, IPv6",
		file: head + "services:\n" +
			strings.NewReplacer("web", "all", "[80]", "[0]", "198.18.10.10", "2001:db8::10").Replace(svc) +
			strings.NewReplacer("198.18.10.10", "2001:db8::10").Replace(svc),
		want: []string{`services[1].ports[0]: [2001:db8::10]:80/tcp overlaps [2001:db8::10]:*/tcp of services[0] ("all") (line 14, column 13)`},
	},
	{
		name: "two wildcards",
		file: head + "services:\n" +
			strings.NewReplacer("web", "a", "[80]", "[0]").Replace(svc) +
			strings.NewReplacer("web", "b", "[80]", "[0]").Replace(svc),
		want: []string{`services[1].ports[0]: 198.18.10.10:*/tcp is already defined by services[0] ("a") (line 14, column 13)`},
	},
	{
		name: "overlapping blocks within a pool",
		file: head + `pools:
  - name: p
    blocks:
      - {start: 198.18.10.100, stop: 198.18.10.110}
      - {cidr: 198.18.10.96/28}
`,
		want: []string{`pools[0].blocks[1]: 198.18.10.96/28 overlaps pools[0].blocks[0] (198.18.10.100-198.18.10.110) (line 9, column 9)`},
	},
	{
		name: "overlapping blocks across pools",
		file: head + `pools:
  - name: p
    blocks:
      - {cidr: "2001:db8:10::/124"}
  - name: q
    blocks:
      - {start: 198.18.10.1, stop: 198.18.10.2}
      - {start: "2001:db8:10::f", stop: "2001:db8:10::1f"}
`,
		want: []string{`pools[1].blocks[1]: 2001:db8:10::f-2001:db8:10::1f overlaps pools[0].blocks[0] (2001:db8:10::/124) (line 12, column 9)`},
	},
	{
		name: "duplicate pool names",
		file: head + "pools:\n  - {name: p, blocks: [{cidr: 198.18.10.0/30}]}\n  - {name: p, blocks: [{cidr: 198.18.10.4/30}]}\n",
		want: []string{`pools[1].name: "p" is already used by pools[0] (line 7, column 12)`},
	},
	{
		name: "unknown pool",
		file: head + "services:\n" + strings.Replace(svc, "address: 198.18.10.10", "pool: nope", 1),
		want: []string{`services[0].pool: "nope" is not defined under pools (line 7, column 11)`},
	},
	{
		name: "address and pool",
		file: head + "pools:\n  - {name: p, blocks: [{cidr: 198.18.10.0/30}]}\nservices:\n" + svc + "    pool: p\n",
		want: []string{`services[0].pool: a service has either an address or a pool, not both (line 13, column 11)`},
	},
	{
		name: "pool and address, the address second",
		file: head + "pools:\n  - {name: p, blocks: [{cidr: 198.18.10.0/30}]}\nservices:\n  - pool: p\n    address: 198.18.10.10\n    name: web\n    protocol: tcp\n    ports: [80]\n    mode: dsr\n",
		want: []string{`services[0].address: a service has either an address or a pool, not both (line 9, column 14)`},
	},
	{
		name: "neither address nor pool",
		file: head + "services:\n" + strings.Replace(svc, "    address: 198.18.10.10\n", "", 1),
		want: []string{`services[0]: a service needs an address or a pool (line 6, column 5)`},
	},
	{
		name: "ipip without an IPv4 source",
		file: head + "services:\n" + svc + "    encap: ipip\n    backends:\n      - {address: 198.18.1.1}\n      - {address: 198.18.1.2}\n",
		want: []string{`services[0].backends[0].address: "198.18.1.1" needs encap.sourceIPv4 for encap ipip (line 13, column 19)`},
	},
	{
		name: "ipip to an IPv6 backend with only an IPv4 source",
		file: head + "encap:\n  sourceIPv4: 198.18.0.1\nservices:\n" + svc + "    encap: ipip\n    backends:\n      - {address: 198.18.1.1}\n      - {address: \"2001:db8::1\"}\n",
		want: []string{`services[0].backends[1].address: "2001:db8::1" needs encap.sourceIPv6 for encap ipip (line 16, column 19)`},
	},
	{
		name: "duplicate backend",
		file: head + "services:\n" + svc + "    backends:\n      - {address: 198.18.1.1}\n      - {address: 198.18.1.2}\n      - {address: 198.18.1.1, weight: 3}\n",
		want: []string{`services[0].backends[2].address: "198.18.1.1" is already listed as backends[0] (line 14, column 19)`},
	},
	{
		name: "duplicate backend address:port",
		file: head + "services:\n" + svc + "    backends:\n      - {address: 198.18.1.1, port: 8080}\n      - {address: 198.18.1.1}\n      - {address: 198.18.1.1, port: 8080}\n",
		want: []string{`services[0].backends[2].address: "198.18.1.1" with port 8080 is already listed as backends[0] (line 14, column 19)`},
	},
	{
		name: "more backends than table slots",
		file: head + "services:\n" + svc + "    tableSize: 251\n    backends:\n" + manyBackends(252),
		want: []string{`services[0].backends: 252 backends with weight above 0 do not fit a table of 251 slots; raise tableSize (line 13, column 7)`},
	},
	{
		name: "duplicate interface",
		file: "interfaces:\n  - name: eth0\n  - name: eth0\nmaglev:\n  seed: 7sVbCXnvcRBFqlPEkQJsHQ==\n",
		want: []string{`interfaces[1].name: "eth0" is already listed as interfaces[0] (line 3, column 11)`},
	},
	{
		name: "announce interface not in interfaces",
		file: head + "announce:\n  l2:\n    interfaces: [eth0, eth1]\n",
		want: []string{`announce.l2.interfaces[1]: "eth1" is not listed in interfaces (line 7, column 24)`},
	},
	{
		name: "announce l2 mode",
		file: head + "announce:\n  l2:\n    mode: sometimes\n",
		want: []string{`announce.l2.mode: "sometimes" is not one of always, external (line 7, column 11)`},
	},
	{
		name: "announce bgp and external l2 mode without a seed",
		file: "interfaces:\n  - name: eth0\nannounce:\n  l2:\n    mode: external\n  bgp:\n    localASN: 65010\n    routerID: 198.18.0.1\n",
		want: []string{
			`announce.l2.mode: needs maglev.seed: appliances that share VIPs must share the seed, or a flow that moves between them reaches another backend; make one with: head -c 16 /dev/urandom | base64 (line 5, column 11)`,
			`announce.bgp: needs maglev.seed: appliances that share VIPs must share the seed, or a flow that moves between them reaches another backend; make one with: head -c 16 /dev/urandom | base64 (line 7, column 5)`,
		},
	},
	{
		name: "announce bgp missing keys",
		file: head + "announce:\n  bgp:\n    peers:\n      - {asn: 65000}\n",
		want: []string{
			`announce.bgp.localASN: missing (line 7, column 5)`,
			`announce.bgp.routerID: missing (line 7, column 5)`,
			`announce.bgp.peers[0].address: missing (line 8, column 9)`,
		},
	},
	{
		name: "announce bgp bad values",
		file: head + `announce:
  bgp:
    localASN: 0
    routerID: "2001:db8::1"
    listenPort: 0
    peers:
      - {address: 198.18.0.254, asn: 4294967296, holdTime: 2s}
      - {address: 198.18.0.254, asn: 65000, holdTime: 9500ms}
    communities: ["65010:100", "65536:1", "no"]
    gracefulRestart: {restartTime: 2h}
    drain: later
`,
		want: []string{
			`announce.bgp.localASN: 0 is out of range (1 to 4294967295) (line 7, column 15)`,
			`announce.bgp.routerID: "2001:db8::1" is not an IPv4 address (a router ID is written as one) (line 8, column 15)`,
			`announce.bgp.listenPort: 0 is out of range (1 to 65535, or -1 to only dial out) (line 9, column 17)`,
			`announce.bgp.peers[0].asn: 4294967296 is out of range (1 to 4294967295) (line 11, column 38)`,
			`announce.bgp.peers[0].holdTime: "2s" is shorter than 3s (line 11, column 60)`,
			`announce.bgp.peers[1].address: "198.18.0.254" is already listed as announce.bgp.peers[0] (line 12, column 19)`,
			`announce.bgp.peers[1].holdTime: "9500ms" is not a whole number of seconds (line 12, column 55)`,
			`announce.bgp.communities[1]: "65536:1" is not a community (such as "65010:100", each half 0 to 65535) (line 13, column 32)`,
			`announce.bgp.communities[2]: "no" is not a community (such as "65010:100", each half 0 to 65535) (line 13, column 43)`,
			`announce.bgp.gracefulRestart.restartTime: "2h" is longer than 4095s, the most BGP can carry (line 14, column 36)`,
			`announce.bgp.drain: "later" is not one of withdraw, gracefulShutdown (line 15, column 12)`,
		},
	},
	{
		name: "announce gratuitous count and intervals out of range",
		file: head + "announce:\n  l2:\n    gratuitousCount: 0\n    gratuitousInterval: 1ms\n    refreshInterval: 100ms\n",
		want: []string{
			`announce.l2.gratuitousCount: 0 is out of range (1 to 100) (line 7, column 22)`,
			`announce.l2.gratuitousInterval: "1ms" is shorter than 10ms (line 8, column 25)`,
			`announce.l2.refreshInterval: "100ms" is shorter than 1s (0s turns refreshes off) (line 9, column 22)`,
		},
	},

	// Health checks.
	{
		name: "health check of a bad type",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: icmp\n",
		want: []string{`services[0].healthCheck.type: "icmp" is not one of none, tcp, http, https, udp (line 12, column 13)`},
	},
	{
		name: "health check not a map",
		file: head + "services:\n" + svc + "    healthCheck: tcp\n",
		want: []string{`services[0].healthCheck: want a map, got "tcp" (line 11, column 18)`},
	},
	{
		name: "health check unknown key",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: tcp\n      intervall: 5s\n",
		want: []string{`services[0].healthCheck.intervall: unknown key; did you mean interval? (line 13, column 7)`},
	},
	{
		name: "health check timeout not shorter than interval",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: tcp\n      interval: 2s\n      timeout: 2s\n",
		want: []string{`services[0].healthCheck.timeout: "2s" must be shorter than interval (2s) (line 14, column 16)`},
	},
	{
		name: "health check interval not longer than the default timeout",
		file: head + "services:\n" + svc + "    healthCheck: {type: tcp, interval: 500ms}\n",
		want: []string{`services[0].healthCheck.interval: "500ms" must be longer than timeout (1s) (line 11, column 40)`},
	},
	{
		name: "health check timeout above a bad interval is not compared",
		file: head + "services:\n" + svc + "    healthCheck: {type: tcp, interval: 2, timeout: 3s}\n",
		want: []string{`services[0].healthCheck.interval: 2 is not a duration (such as "15m" or "90s") (line 11, column 40)`},
	},
	{
		name: "health check durations too short",
		file: head + "services:\n" + svc + "    healthCheck: {type: tcp, interval: 10ms, timeout: 1ms}\n",
		want: []string{
			`services[0].healthCheck.interval: "10ms" is shorter than 100ms (line 11, column 40)`,
			`services[0].healthCheck.timeout: "1ms" is shorter than 10ms (line 11, column 55)`,
		},
	},
	{
		name: "health check rise 0 and fall 101",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: tcp\n      rise: 0\n      fall: 101\n",
		want: []string{
			`services[0].healthCheck.rise: 0 is out of range (1 to 100) (line 13, column 13)`,
			`services[0].healthCheck.fall: 101 is out of range (1 to 100) (line 14, column 13)`,
		},
	},
	{
		name: "health check port 0",
		file: head + "services:\n" + svc + "    healthCheck: {type: tcp, port: 0}\n",
		want: []string{`services[0].healthCheck.port: 0 is out of range (1 to 65535) (line 11, column 36)`},
	},
	{
		name: "health check bad expectStatus",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: http\n      expectStatus: 200-99\n",
		want: []string{`services[0].healthCheck.expectStatus: "200-99" is not a list of HTTP status codes from 100 to 599 and ranges of them (such as "200-399" or "200,204") (line 13, column 21)`},
	},
	{
		name: "health check expectStatus out of range",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: http\n      expectStatus: 600\n",
		want: []string{`services[0].healthCheck.expectStatus: 600 is not a list of HTTP status codes from 100 to 599 and ranges of them (such as "200-399" or "200,204") (line 13, column 21)`},
	},
	{
		name: "health check path without an http type",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: tcp\n      path: /healthz\n      host: www.example.com\n",
		want: []string{
			`services[0].healthCheck.path: path applies to types http and https only (line 13, column 13)`,
			`services[0].healthCheck.host: host applies to types http and https only (line 14, column 13)`,
		},
	},
	{
		name: "health check path without a type",
		file: head + "services:\n" + svc + "    healthCheck: {path: /healthz}\n",
		want: []string{`services[0].healthCheck.path: path applies to types http and https only (line 11, column 25)`},
	},
	{
		name: "health check path not a path",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: https\n      path: healthz\n      host: \"a b\"\n",
		want: []string{
			`services[0].healthCheck.path: "healthz" is not an HTTP path (such as "/healthz") (line 13, column 13)`,
			`services[0].healthCheck.host: "a b" is not a host name (such as "www.example.com") (line 14, column 13)`,
		},
	},
	{
		name: "health check send with http, expectStatus with udp",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: http\n      send: ping\n" +
			"  - name: dns\n    address: 198.18.10.10\n    protocol: udp\n    ports: [53]\n    mode: dsr\n" +
			"    healthCheck:\n      type: udp\n      send: ping\n      expectStatus: \"200\"\n",
		want: []string{
			`services[0].healthCheck.send: send applies to type udp only (line 13, column 13)`,
			`services[1].healthCheck.expectStatus: expectStatus applies to types http and https only (line 22, column 21)`,
		},
	},
	{
		name: "udp health check without send",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: udp\n      expect: pong\n",
		want: []string{`services[0].healthCheck.send: missing; a udp check sends it and waits for a reply (line 12, column 7)`},
	},
	{
		name: "udp health check payload too long",
		file: head + "services:\n" + svc + "    healthCheck:\n      type: udp\n      send: " + strings.Repeat("x", 1025) + "\n",
		want: []string{`services[0].healthCheck.send: "` + strings.Repeat("x", 1025) + `" is longer than 1024 bytes (line 13, column 13)`},
	},
	{
		name: "health check of every port without a port",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[0]", 1) +
			"    backends:\n      - {address: 198.18.1.1, port: 8080}\n      - {address: 198.18.1.2}\n" +
			"    healthCheck:\n      type: tcp\n",
		want: []string{`services[0].healthCheck.port: missing; backends[1] has no port and the service has every port (ports: [0]) (line 15, column 7)`},
	},
	{
		name: "health check of every port with ports is fine",
		file: head + "services:\n" + strings.Replace(svc, "[80]", "[0]", 1) +
			"    backends:\n      - {address: 198.18.1.1}\n    healthCheck: {type: tcp, port: 22}\n" +
			strings.NewReplacer("web", "web2", "[80]", "[0]", "10.10", "10.11").Replace(svc) +
			"    backends:\n      - {address: 198.18.1.1, port: 22}\n    healthCheck: {type: tcp}\n" +
			strings.NewReplacer("web", "web3", "[80]", "[0]", "10.10", "10.12").Replace(svc) +
			"    backends:\n      - {address: 198.18.1.1}\n    healthCheck: {type: none}\n",
		want: nil,
	},

	// The file as a whole.
	{
		name: "empty file",
		file: "",
		want: []string{`the file holds no settings (line 1, column 1)`},
	},
	{
		name: "only comments",
		file: "# nothing yet\n",
		want: []string{`the file holds no settings (line 1, column 1)`},
	},
	{
		name: "two documents",
		file: head + "---\n" + head,
		want: []string{`a second YAML document starts here; the file must hold one (line 5, column 1)`},
	},
	{
		name: "YAML syntax error",
		file: head + "services: [\n",
		want: []string{`invalid YAML: did not find expected node content (line 5)`},
	},
	{
		name: "tab indentation",
		file: "interfaces:\n\t- name: eth0\n",
		want: []string{`invalid YAML: found character that cannot start any token; indent with spaces, not tabs (line 2)`},
	},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			got := errorLines(t, tc.file)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s\nfile:\n%s", diff, tc.file)
			}
		})
	}
}

// manyBackends returns n backend lines.
func manyBackends(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("      - {address: 198.18." + itoa(1+i/250) + "." + itoa(1+i%250) + "}\n")
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestParseErrorsAtOnce checks that decoding and validation errors are all
// reported, in position order, whichever phase found them.
func TestParseErrorsAtOnce(t *testing.T) {
	file := `interfaces:
  - name: eth0
    xdpMode: fast
maglev:
  seed: c2VlZA==
services:
  - name: web
    address: 198.18.10.10
    protocol: tcp
    ports: [80]
    mode: dsr
    backends:
      - {address: 10.0.0.300}
  - name: web
    address: 198.18.10.10
    protocol: udp
    ports: [80, 70000]
    mode: snat
    colour: blue
pools:
  - {name: p, blocks: [{cidr: 198.18.20.0/24}, {start: 198.18.20.7, stop: 198.18.20.9}]}
announce:
  l2: {interfaces: [eth9]}
`
	want := []string{
		`interfaces[0].xdpMode: "fast" is not one of auto, native, generic (line 3, column 14)`,
		`maglev.seed: "c2VlZA==" is 4 bytes, want 16 (line 5, column 9)`,
		`services[0].backends[0].address: "10.0.0.300" is not an IP address (line 13, column 19)`,
		`services[1].name: "web" is already used by services[0] (line 14, column 11)`,
		`services[1].ports[1]: 70000 is out of range (1 to 65535, or 0 for every port) (line 17, column 17)`,
		`services[1].mode: mode snat needs an IPv4 address under snat.sources for 198.18.10.10 (line 18, column 11)`,
		`services[1].colour: unknown key (line 19, column 5)`,
		`pools[0].blocks[1]: 198.18.20.7-198.18.20.9 overlaps pools[0].blocks[0] (198.18.20.0/24) (line 21, column 48)`,
		`announce.l2.interfaces[0]: "eth9" is not listed in interfaces (line 23, column 21)`,
	}
	got := errorLines(t, file)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}

	// The structured errors carry the same facts.
	_, err := Parse("/etc/xdplb/xdplb.yaml", []byte(file))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("Parse returned %T, want ErrorList", err)
	}
	wantFirst := &Error{File: "/etc/xdplb/xdplb.yaml", Path: "interfaces[0].xdpMode", Line: 3, Column: 14, Message: `"fast" is not one of auto, native, generic`}
	if diff := cmp.Diff(wantFirst, list[0]); diff != "" {
		t.Errorf("first error (-want +got):\n%s", diff)
	}
	var one *Error
	if !errors.As(err, &one) || one != list[0] {
		t.Errorf("errors.As(err, *Error) = %v, want the first error of the list", one)
	}
}

// TestAliasBomb checks that aliases expanding to a huge document are refused
// quickly instead of exhausting memory.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString(head)
	b.WriteString("services:\n  - &s {name: a, address: 198.18.10.10, protocol: tcp, ports: [80], mode: dsr, backends: [")
	for i := range 1100 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("{address: 198.18.1.1}")
	}
	b.WriteString("]}\n")
	for range 1100 {
		b.WriteString("  - *s\n")
	}
	// The budget runs out 1<<20 nodes in: 7 before the services, then
	// 2208 per service (its item, 7 values, 1100 backends of 2 nodes), so
	// in service 474, at its 985th backend's address.
	want := []string{`services[474].backends[984].address: the file expands to more than 1048576 nodes through aliases (line 6, column 22733)`}
	if diff := cmp.Diff(want, errorLines(t, b.String())); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}
