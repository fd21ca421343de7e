package health

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/config"
)

func TestTargets(t *testing.T) {
	file := `interfaces: [{name: eth0}]
maglev: {seed: 7sVbCXnvcRBFqlPEkQJsHQ==}
services:
  - name: web
    address: 198.18.10.10
    protocol: tcp
    ports: [443, 80]
    mode: dsr
    backends:
      - {address: 198.18.1.1}
      - {address: 198.18.1.2, port: 8080, weight: 0}
    healthCheck: {type: http}
  - name: dns
    address: 198.18.10.10
    protocol: udp
    ports: [53]
    mode: dsr
    backends:
      - {address: "2001:db8::53"}
    healthCheck: {type: udp, port: 5353, send: ping}
  - name: all
    address: 198.18.10.11
    protocol: tcp
    ports: [0]
    mode: dsr
    backends:
      - {address: 198.18.1.3, port: 22}
    healthCheck: {type: tcp}
  - name: unchecked
    address: 198.18.10.12
    protocol: tcp
    ports: [80]
    mode: dsr
    backends:
      - {address: 198.18.1.4}
`
	c, err := config.Parse("x.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range Targets(c.Services(nil)) {
		got = append(got, tg.Key.Service+" "+tg.Key.Backend.String()+" → "+string(tg.Check.Type)+" "+tg.Addr.String())
		if tg.Key.Backend.Addr() != tg.Addr.Addr() {
			t.Errorf("target %v checks another address, %v", tg.Key, tg.Addr)
		}
	}
	want := []string{
		"web 198.18.1.1:0 → http 198.18.1.1:80",          // the service's lowest port
		"web 198.18.1.2:8080 → http 198.18.1.2:8080",     // the backend's port, drained or not
		"dns [2001:db8::53]:0 → udp [2001:db8::53]:5353", // the check's port
		"all 198.18.1.3:22 → tcp 198.18.1.3:22",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Targets (-want +got):\n%s", diff)
	}
}
