package kubernetes

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the source's Prometheus metrics; docs/metrics.md lists them.
type metrics struct {
	events         *prometheus.CounterVec
	leader         prometheus.Gauge
	badAnnotations prometheus.Counter
	allocations    *prometheus.GaugeVec

	mu    sync.Mutex
	pools map[string]bool
}

func newMetrics() *metrics {
	return &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdplb_kubernetes_watch_events_total",
			Help: "Watch events received from the Kubernetes API, by resource and type (add, update, delete).",
		}, []string{"resource", "type"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdplb_kubernetes_leader",
			Help: "1 while this appliance holds the leader Lease (allocates addresses and writes status), else 0.",
		}),
		badAnnotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdplb_kubernetes_invalid_annotations_total",
			Help: "Distinct bad xdplb.io/ annotations seen on Services; each kept its last good settings.",
		}),
		allocations: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xdplb_kubernetes_pool_allocations",
			Help: "Addresses the leader has given to Kubernetes Services, by pool (as of the leader's last pass; 0 elsewhere).",
		}, []string{"pool"}),
		pools: map[string]bool{},
	}
}

func (m *metrics) setAllocations(byPool map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.pools {
		if _, ok := byPool[p]; !ok {
			m.allocations.DeleteLabelValues(p)
			delete(m.pools, p)
		}
	}
	for p, n := range byPool {
		m.allocations.WithLabelValues(p).Set(float64(n))
		m.pools[p] = true
	}
}

// Describe implements prometheus.Collector.
func (s *Source) Describe(ch chan<- *prometheus.Desc) {
	s.metrics.events.Describe(ch)
	s.metrics.leader.Describe(ch)
	s.metrics.badAnnotations.Describe(ch)
	s.metrics.allocations.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s *Source) Collect(ch chan<- prometheus.Metric) {
	s.metrics.events.Collect(ch)
	s.metrics.leader.Collect(ch)
	s.metrics.badAnnotations.Collect(ch)
	s.metrics.allocations.Collect(ch)
}
