package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Defaults of the kubernetes section. docs/config.md lists them too.
const (
	DefaultLoadBalancerClass = "xdplb.io/lb"
	DefaultLeaseNamespace    = "kube-system"
)

// Kubernetes configures the Kubernetes source (package config/kubernetes):
// Services of type LoadBalancer and their EndpointSlices become services,
// and the leader of the appliances gives them addresses from the pools. A
// change of this section takes effect at the next start of the daemon.
type Kubernetes struct {
	// Kubeconfig is the kubeconfig file, or empty for the in-cluster
	// configuration.
	Kubeconfig string
	// LoadBalancerClass selects the Services with this
	// spec.loadBalancerClass.
	LoadBalancerClass string
	// DefaultClass also selects Services without a class.
	DefaultClass bool
	// Backends says what the backends are: the endpoints' pod addresses or
	// the nodes with the Service's NodePort.
	Backends KubernetesBackends
	// LeaseNamespace is where the Lease of the leader lives.
	LeaseNamespace string
}

// KubernetesBackends is what a Kubernetes Service's backends are.
type KubernetesBackends string

// The kinds of Kubernetes backends.
const (
	// BackendsPods forwards to the endpoints' addresses, which the
	// appliance must be able to reach (routable pod addresses).
	BackendsPods KubernetesBackends = "pods"
	// BackendsNodes forwards to the ready nodes on the Service's NodePort.
	BackendsNodes KubernetesBackends = "nodes"
)

// Selector selects Kubernetes objects by their labels, as a Kubernetes
// LabelSelector does: every one of MatchLabels and of MatchExpressions must
// hold. The empty selector selects everything.
type Selector struct {
	MatchLabels      map[string]string
	MatchExpressions []SelectorRequirement
}

// SelectorRequirement is one expression of a Selector.
type SelectorRequirement struct {
	Key string
	// Operator is In, NotIn, Exists or DoesNotExist.
	Operator string
	Values   []string
}

// Matches reports whether labels satisfy the selector. A nil selector
// matches everything.
func (s *Selector) Matches(labels map[string]string) bool {
	if s == nil {
		return true
	}
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		v, ok := labels[r.Key]
		switch r.Operator {
		case "In":
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		}
	}
	return true
}

var kubernetesKeys = []string{"kubeconfig", "loadBalancerClass", "defaultClass", "backends", "leaseNamespace"}

func (d *decoder) kubernetes(path string, n *yaml.Node) *Kubernetes {
	k := &Kubernetes{LoadBalancerClass: DefaultLoadBalancerClass, Backends: BackendsPods, LeaseNamespace: DefaultLeaseNamespace}
	if n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		return k // kubernetes: {} turns the source on with the defaults
	}
	d.fields(path, n, kubernetesKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "kubeconfig":
			if s, ok := d.str(path, v); ok {
				if s == "" {
					d.errorf(path, v, "is empty; leave the key out for the in-cluster configuration")
				} else {
					k.Kubeconfig = s
				}
			}
		case "loadBalancerClass":
			if s, ok := d.str(path, v); ok {
				if msg := badQualifiedName(s); msg != "" {
					d.errorf(path, v, "%s %s", value(v), msg)
				} else {
					k.LoadBalancerClass = s
				}
			}
		case "defaultClass":
			if b, ok := d.boolean(path, v); ok {
				k.DefaultClass = b
			}
		case "backends":
			if s, ok := d.oneOf(path, v, "pods", "nodes"); ok {
				k.Backends = KubernetesBackends(s)
			}
		case "leaseNamespace":
			if s, ok := d.str(path, v); ok {
				if !dnsLabel.MatchString(s) {
					d.errorf(path, v, "%s is not a namespace name (a DNS label)", value(v))
				} else {
					k.LeaseNamespace = s
				}
			}
		}
	})
	return k
}

var (
	dnsLabel      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelName     = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$`)
	dnsSubdomain  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelValueExp = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
)

// badQualifiedName says why s is not a Kubernetes qualified name (a label
// key, a loadBalancerClass: [prefix/]name), or returns "".
func badQualifiedName(s string) string {
	prefix, name, ok := strings.Cut(s, "/")
	if !ok {
		prefix, name = "", s
	}
	if ok && (len(prefix) > 253 || !dnsSubdomain.MatchString(prefix)) || len(name) > 63 || !labelName.MatchString(name) {
		return "is not a qualified name (such as xdplb.io/lb: an optional DNS prefix, then a name of at most 63 letters, digits, - _ .)"
	}
	return ""
}

var selectorKeys = []string{"matchLabels", "matchExpressions"}
var requirementKeys = []string{"key", "operator", "values"}

// selector decodes a label selector.
func (d *decoder) selector(path string, n *yaml.Node) *Selector {
	s := &Selector{}
	d.fields(path, n, selectorKeys, func(key, path string, v *yaml.Node) {
		switch key {
		case "matchLabels":
			s.MatchLabels = map[string]string{}
			if v.Kind != yaml.MappingNode {
				d.wrongType(path, v, "a map")
				return
			}
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, val := v.Content[i], v.Content[i+1]
				kpath := join(path, k.Value)
				if msg := badQualifiedName(k.Value); msg != "" {
					d.errorf(kpath, k, "%s %s", value(k), msg)
					continue
				}
				if _, dup := s.MatchLabels[k.Value]; dup {
					d.errorf(kpath, k, "duplicate key")
					continue
				}
				str, ok := d.str(kpath, val)
				if !ok {
					continue
				}
				if len(str) > 63 || !labelValueExp.MatchString(str) {
					d.errorf(kpath, val, "%s is not a label value (at most 63 letters, digits, - _ .)", value(val))
					continue
				}
				s.MatchLabels[k.Value] = str
			}
		case "matchExpressions":
			d.list(path, v, func(_ int, path string, item *yaml.Node) {
				var r SelectorRequirement
				present := d.fields(path, item, requirementKeys, func(key, path string, v *yaml.Node) {
					switch key {
					case "key":
						if k, ok := d.str(path, v); ok {
							if msg := badQualifiedName(k); msg != "" {
								d.errorf(path, v, "%s %s", value(v), msg)
							}
							r.Key = k
						}
					case "operator":
						r.Operator, _ = d.oneOf(path, v, "In", "NotIn", "Exists", "DoesNotExist")
					case "values":
						d.list(path, v, func(_ int, path string, item *yaml.Node) {
							if s, ok := d.str(path, item); ok {
								r.Values = append(r.Values, s)
							}
						})
					}
				})
				if present == nil {
					return
				}
				for _, k := range []string{"key", "operator"} {
					if !present[k] {
						d.missing(join(path, k), item, "missing")
					}
				}
				switch r.Operator {
				case "In", "NotIn":
					if len(r.Values) == 0 {
						d.errorf(path, item, "operator %s needs values", r.Operator)
					}
				case "Exists", "DoesNotExist":
					if present["values"] {
						d.errorf(join(path, "values"), item, "operator %s takes no values", r.Operator)
					}
				}
				s.MatchExpressions = append(s.MatchExpressions, r)
			})
		}
	})
	return s
}

// ParseHealthCheck decodes a health check written as the value of a
// service's healthCheck key (YAML or JSON, such as `{type: http, path:
// /healthz}`), with its defaults filled in. The Kubernetes source reads the
// annotation xdplb.io/health-check with it. Errors name the key and its
// position within text.
func ParseHealthCheck(name, text string) (HealthCheck, error) {
	d := newDecoder(name)
	root := d.parse([]byte(text))
	if root == nil {
		d.errs.sort()
		return HealthCheck{}, d.errs
	}
	h, _ := d.healthCheck("healthCheck", root)
	if len(d.errs) == 0 && h.Timeout >= h.Interval {
		d.errorf("healthCheck.timeout", root, "%s is not shorter than interval %s", fmtDuration(h.Timeout), fmtDuration(h.Interval))
	}
	if len(d.errs) > 0 {
		d.errs.sort()
		return HealthCheck{}, d.errs
	}
	return h, nil
}

// CheckTableSize returns an error unless n is a Maglev table size: a prime
// between MinTableSize and MaxTableSize.
func CheckTableSize(n int) error {
	if n < MinTableSize || n > MaxTableSize || !isPrime(int64(n)) {
		return fmt.Errorf("%d is not a prime between %d and %d", n, MinTableSize, MaxTableSize)
	}
	return nil
}
