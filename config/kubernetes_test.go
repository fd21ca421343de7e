package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKubernetesSection(t *testing.T) {
	c := mustParse(t, head+"kubernetes: {}\n")
	want := &Kubernetes{LoadBalancerClass: "xdplb.io/lb", Backends: BackendsPods, LeaseNamespace: "kube-system"}
	if diff := cmp.Diff(want, c.Kubernetes); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if c := mustParse(t, head); c.Kubernetes != nil {
		t.Errorf("no section: %+v", c.Kubernetes)
	}
	c = mustParse(t, head+"kubernetes:\n  kubeconfig: /etc/xdplb/kubeconfig\n  loadBalancerClass: example.com/edge\n  defaultClass: true\n  backends: nodes\n  leaseNamespace: xdplb\n"+
		"pools:\n  - name: k\n    blocks: [{cidr: 198.18.20.0/28}]\n    serviceSelector:\n      matchLabels: {tier: edge}\n      matchExpressions: [{key: env, operator: NotIn, values: [dev]}]\n")
	want = &Kubernetes{Kubeconfig: "/etc/xdplb/kubeconfig", LoadBalancerClass: "example.com/edge", DefaultClass: true, Backends: BackendsNodes, LeaseNamespace: "xdplb"}
	if diff := cmp.Diff(want, c.Kubernetes); diff != "" {
		t.Errorf("section (-want +got):\n%s", diff)
	}
	sel := c.Pools[0].ServiceSelector
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"tier": "edge"}, true},
		{map[string]string{"tier": "edge", "env": "dev"}, false},
		{map[string]string{"tier": "core"}, false},
		{nil, false},
	} {
		if got := sel.Matches(tc.labels); got != tc.want {
			t.Errorf("selector on %v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	var none *Selector
	if !none.Matches(nil) {
		t.Error("a pool without a selector selects no Service")
	}
}

func TestKubernetesErrors(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"kubernetes:\n  backend: pods\n", `kubernetes.backend: unknown key; did you mean backends? (line 6, column 3)`},
		{"kubernetes:\n  backends: services\n", `kubernetes.backends: "services" is not one of pods, nodes (line 6, column 13)`},
		{"kubernetes:\n  loadBalancerClass: 'bad class'\n", `kubernetes.loadBalancerClass: "bad class" is not a qualified name`},
		{"kubernetes:\n  leaseNamespace: Kube_System\n", `kubernetes.leaseNamespace: "Kube_System" is not a namespace name (a DNS label) (line 6, column 19)`},
		{"kubernetes:\n  defaultClass: yes please\n", `kubernetes.defaultClass: want true or false`},
		{"pools:\n  - {name: p, blocks: [{cidr: 198.18.20.0/28}], serviceSelector: {matchLabel: {a: b}}}\n", `pools[0].serviceSelector.matchLabel: unknown key; did you mean matchLabels?`},
		{"pools:\n  - {name: p, blocks: [{cidr: 198.18.20.0/28}], serviceSelector: {matchExpressions: [{key: a, operator: In}]}}\n", `operator In needs values`},
		{"pools:\n  - {name: p, blocks: [{cidr: 198.18.20.0/28}], serviceSelector: {matchLabels: {a: 'b c'}}}\n", `pools[0].serviceSelector.matchLabels.a: "b c" is not a label value`},
	} {
		_, err := Parse("xdplb.yaml", []byte(head+tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant …%s…", tc.body, err, tc.want)
		}
	}
}

func TestParseHealthCheck(t *testing.T) {
	h, err := ParseHealthCheck("a", "{type: http, path: /healthz, interval: 5s}")
	if err != nil || h.Type != HealthCheckHTTP || h.Path != "/healthz" || h.Interval.Seconds() != 5 || h.Rise != DefaultHealthRise {
		t.Errorf("ParseHealthCheck = %+v, %v", h, err)
	}
	if _, err := ParseHealthCheck("a", "{type: http, interval: 1s, timeout: 2s}"); err == nil {
		t.Error("a timeout longer than the interval is accepted")
	}
	if _, err := ParseHealthCheck("a", "[1, 2]"); err == nil {
		t.Error("a list is accepted as a health check")
	}
}
