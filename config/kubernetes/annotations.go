package kubernetes

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/xdplb/xdplb/config"
)

// The annotations a Service may carry. docs/kubernetes.md describes them.
const (
	AnnotationPrefix      = "xdplb.io/"
	AnnotationMode        = "xdplb.io/mode"         // dsr | snat
	AnnotationEncap       = "xdplb.io/encap"        // none | ipip, for dsr only
	AnnotationTableSize   = "xdplb.io/table-size"   // a prime, 251 to 131071
	AnnotationHealthCheck = "xdplb.io/health-check" // a healthCheck as in the file, in YAML flow style
	AnnotationIPs         = "xdplb.io/ips"          // addresses to take, comma-separated
	AnnotationSharingKey  = "xdplb.io/sharing-key"  // Services with the same key may share an address
)

var knownAnnotations = []string{AnnotationMode, AnnotationEncap, AnnotationTableSize, AnnotationHealthCheck, AnnotationIPs, AnnotationSharingKey}

// settings are a Service's per-service settings, from its annotations.
type settings struct {
	Mode config.Mode
	// Encap is empty for mode snat, as in the file.
	Encap       config.Encap
	TableSize   int
	HealthCheck config.HealthCheck
	IPs         []netip.Addr
	SharingKey  string
}

// parseSettings reads a Service's xdplb.io/ annotations. Every problem is
// reported, one per annotation, in the annotations' order.
func parseSettings(ann map[string]string, defaultTableSize int) (settings, error) {
	s := settings{Mode: config.ModeDSR, Encap: config.EncapNone, TableSize: defaultTableSize,
		HealthCheck: config.HealthCheck{Type: config.HealthCheckNone, Interval: config.DefaultHealthInterval, Timeout: config.DefaultHealthTimeout, Rise: config.DefaultHealthRise, Fall: config.DefaultHealthFall}}
	var problems []string
	bad := func(key, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("annotation %s: %q %s", key, ann[key], fmt.Sprintf(format, args...)))
	}
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := ann[k]
		switch k {
		case AnnotationMode:
			switch v {
			case "dsr":
				s.Mode = config.ModeDSR
			case "snat":
				s.Mode = config.ModeSNAT
			default:
				bad(k, "is not one of dsr, snat")
			}
		case AnnotationEncap:
			switch {
			case ann[AnnotationMode] == "snat":
				// Any value: snat reaches its backends by address and port.
				bad(k, "applies to mode dsr only, and %s is %q", AnnotationMode, "snat")
			case v == "none" || v == "ipip":
				s.Encap = config.Encap(v)
			default:
				bad(k, "is not one of none, ipip")
			}
		case AnnotationTableSize:
			n, err := strconv.Atoi(v)
			if err == nil {
				err = config.CheckTableSize(n)
			}
			if err != nil {
				bad(k, "is not a prime between %d and %d", config.MinTableSize, config.MaxTableSize)
			} else {
				s.TableSize = n
			}
		case AnnotationHealthCheck:
			h, err := config.ParseHealthCheck(k, v)
			if err != nil {
				bad(k, "is not a health check: %s", oneLine(err))
			} else {
				s.HealthCheck = h
			}
		case AnnotationIPs:
			for _, f := range strings.Split(v, ",") {
				a, err := netip.ParseAddr(strings.TrimSpace(f))
				if err != nil || a.Zone() != "" || a.Is4In6() {
					bad(k, "holds %q, which is not an IP address", strings.TrimSpace(f))
					s.IPs = nil
					break
				}
				s.IPs = append(s.IPs, a)
			}
		case AnnotationSharingKey:
			if v == "" || len(v) > 253 {
				bad(k, "must be 1 to 253 bytes")
			} else {
				s.SharingKey = v
			}
		default:
			bad(k, "is not an xdplb annotation (known: %s)", strings.Join(knownAnnotations, ", "))
		}
	}
	if s.Mode == config.ModeSNAT {
		s.Encap = ""
	}
	if len(problems) > 0 {
		return s, fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return s, nil
}

// checkSNAT reports the address families a snat Service would be served
// in that have no SNAT source under the file's snat.sources, in the words
// of the file's check of its own services: the families of its addresses
// (those in its status, then those it asks for), then the families it asks
// for in spec.ipFamilies that it has no address of yet. Other modes need
// no source.
func checkSNAT(st settings, addrs []netip.Addr, families []corev1.IPFamily, snat config.SNAT) error {
	if st.Mode != config.ModeSNAT {
		return nil
	}
	var problems []string
	var seen [2]bool // IPv4, IPv6: already checked
	need := func(v6 bool, what string) {
		fam, i := "IPv4", 0
		if v6 {
			fam, i = "IPv6", 1
		}
		if seen[i] {
			return
		}
		seen[i] = true
		if !slices.ContainsFunc(snat.Sources, func(src netip.Addr) bool { return src.Is6() == v6 }) {
			problems = append(problems, fmt.Sprintf("annotation %s: %q needs an %s address under snat.sources for %s", AnnotationMode, "snat", fam, what))
		}
	}
	for _, a := range addrs {
		need(a.Unmap().Is6(), a.Unmap().String())
	}
	for _, f := range families {
		v6 := f == corev1.IPv6Protocol
		need(v6, "the "+string(f)+" address spec.ipFamilies asks for")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// oneLine joins the lines of an error.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
