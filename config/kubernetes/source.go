package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"github.com/xdplb/xdplb/config"
)

// Name is the source's name in the status, metrics and log.
const Name = "kubernetes"

// LeaseName is the name of the Lease the appliances elect their leader by.
const LeaseName = "xdplb"

// ConditionAllocated is the type of the condition the leader sets on a
// Service: True with its addresses, False with why it has none.
const ConditionAllocated = "xdplb.io/AddressAllocated"

// Leader election timing (client-go's usual values): a dead leader is
// replaced within LeaseDuration.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Options configure New beyond the configuration file.
type Options struct {
	Logger *slog.Logger
	// Identity names this appliance in the Lease; default: the host name
	// and a random suffix.
	Identity string
	// Client replaces the client built from the kubeconfig (tests).
	Client kubernetes.Interface
	// LeaseDuration, RenewDeadline and RetryPeriod override the leader
	// election's timing (tests).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Source is the Kubernetes source of services (see the package doc).
type Source struct {
	log      *slog.Logger
	client   kubernetes.Interface
	identity string
	opts     Options

	mu       sync.Mutex
	cfg      *config.Config
	lastGood map[string]settings // by Service, for Services with bad annotations
	reported map[string]string   // the annotation problem reported, by Service
	offered  []config.Service
	haveSent bool

	kick      chan struct{}
	synced    atomic.Bool
	leader    atomic.Bool
	lastEvent atomic.Int64 // Unix nanoseconds

	metrics *metrics
}

// New returns the source for cfg, whose Kubernetes section must be set.
func New(cfg *config.Config, opts Options) (*Source, error) {
	if cfg.Kubernetes == nil {
		return nil, errors.New("the configuration has no kubernetes section")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Identity == "" {
		host, _ := os.Hostname()
		b := make([]byte, 4)
		rand.Read(b)
		opts.Identity = host + "-" + hex.EncodeToString(b)
	}
	if opts.LeaseDuration == 0 {
		opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = DefaultLeaseDuration, DefaultRenewDeadline, DefaultRetryPeriod
	}
	client := opts.Client
	if client == nil {
		rc, err := restConfig(cfg.Kubernetes.Kubeconfig)
		if err != nil {
			return nil, err
		}
		rc.UserAgent = "xdplb"
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
	}
	s := &Source{
		log: opts.Logger.With("source", Name), client: client, identity: opts.Identity, opts: opts,
		cfg: cfg, lastGood: map[string]settings{}, reported: map[string]string{},
		kick: make(chan struct{}, 1), metrics: newMetrics(),
	}
	// Every series from 0, so that rates and absences mean something.
	resources := []string{"services", "endpointslices"}
	if cfg.Kubernetes.Backends == config.BackendsNodes {
		resources = append(resources, "nodes")
	}
	for _, r := range resources {
		for _, kind := range []string{"add", "update", "delete"} {
			s.metrics.events.WithLabelValues(r, kind)
		}
	}
	zero := map[string]int{}
	for _, p := range poolsFor(cfg) {
		zero[p.Name] = 0
	}
	s.metrics.setAllocations(zero)
	return s, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: no kubeconfig set and not in a cluster: %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: reading kubeconfig %s: %w", kubeconfig, err)
	}
	return rc, nil
}

// Name returns "kubernetes".
func (s *Source) Name() string { return Name }

// Identity is this appliance's name in the Lease.
func (s *Source) Identity() string { return s.identity }

// Synced reports whether the caches have synced and the first services
// were offered.
func (s *Source) Synced() bool { return s.synced.Load() }

// Leader reports whether this appliance holds the Lease.
func (s *Source) Leader() bool { return s.leader.Load() }

// LastEvent is when the last watch event arrived (zero: none yet).
func (s *Source) LastEvent() time.Time {
	n := s.lastEvent.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// ConfigChanged takes the configuration of a reload: its pools, Maglev
// table size and SNAT sources. The rest of the kubernetes section takes
// effect at the next start.
func (s *Source) ConfigChanged(cfg *config.Config) {
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
	s.poke()
}

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

type listers struct {
	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	nodes     corelisters.NodeLister
	recorder  record.EventRecorder
	hasSynced []cache.InformerSynced
}

// Run watches until ctx ends; see controlplane.Source.
func (s *Source) Run(ctx context.Context, update func([]config.Service)) error {
	k := s.config().Kubernetes
	factory := informers.NewSharedInformerFactory(s.client, 0)
	var l listers
	handler := func(resource string) cache.ResourceEventHandler {
		count := func(kind string) {
			s.lastEvent.Store(time.Now().UnixNano())
			s.metrics.events.WithLabelValues(resource, kind).Inc()
			s.poke()
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { count("add") },
			UpdateFunc: func(any, any) { count("update") },
			DeleteFunc: func(any) { count("delete") },
		}
	}
	svcInf := factory.Core().V1().Services()
	svcInf.Informer().AddEventHandler(handler("services"))
	l.services = svcInf.Lister()
	esInf := factory.Discovery().V1().EndpointSlices()
	esInf.Informer().AddEventHandler(handler("endpointslices"))
	l.slices = esInf.Lister()
	l.hasSynced = []cache.InformerSynced{svcInf.Informer().HasSynced, esInf.Informer().HasSynced}
	if k.Backends == config.BackendsNodes {
		nInf := factory.Core().V1().Nodes()
		nInf.Informer().AddEventHandler(handler("nodes"))
		l.nodes = nInf.Lister()
		l.hasSynced = append(l.hasSynced, nInf.Informer().HasSynced)
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	l.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "xdplb", Host: s.identity})

	factory.Start(ctx.Done())
	defer factory.Shutdown()
	s.log.Info("waiting for the caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), l.hasSynced...) {
		return nil // ctx ended
	}
	s.log.Info("caches synced")

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.elect(ctx, k) })

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		if again := s.sync(ctx, &l, update); again {
			retry.Reset(time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			// Let a burst of events (a rollout) settle into one offer.
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil
			}
		case <-retry.C:
		}
	}
}

func (s *Source) config() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// elect runs for the Lease until ctx ends, standing again after a lost one.
func (s *Source) elect(ctx context.Context, k *config.Kubernetes) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: k.LeaseNamespace, Name: LeaseName},
		Client:     s.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   s.opts.LeaseDuration,
			RenewDeadline:   s.opts.RenewDeadline,
			RetryPeriod:     s.opts.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					s.log.Info("leading: this appliance allocates addresses and writes status", "identity", s.identity)
					s.leader.Store(true)
					s.metrics.leader.Set(1)
					s.poke()
				},
				OnStoppedLeading: func() {
					if s.leader.Swap(false) {
						s.log.Info("no longer leading", "identity", s.identity)
					}
					s.metrics.leader.Set(0)
				},
				OnNewLeader: func(id string) {
					if id != s.identity {
						s.log.Info("leader", "identity", id)
					}
				},
			},
		})
		if err != nil {
			s.log.Error("leader election", "err", err)
			return
		}
		le.Run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(s.opts.RetryPeriod):
		}
	}
}

// sync brings status (when leading) and the offer in line with the caches.
// It reports whether something should be tried again soon (a status write
// that failed).
func (s *Source) sync(ctx context.Context, l *listers, update func([]config.Service)) (again bool) {
	cfg := s.config()
	k := cfg.Kubernetes
	all, err := l.services.List(labels.Everything())
	if err != nil {
		s.log.Error("listing services", "err", err)
		return true
	}
	sort.Slice(all, func(i, j int) bool { return key(all[i]) < key(all[j]) })
	var nodes []*corev1.Node
	if l.nodes != nil {
		nodes, _ = l.nodes.List(labels.Everything())
	}
	var mine []*corev1.Service
	sts := map[string]settings{}
	for _, svc := range all {
		if !inClass(svc, k) {
			continue
		}
		st, ok := s.settingsOf(svc, cfg, l.recorder)
		if !ok {
			continue
		}
		mine = append(mine, svc)
		sts[key(svc)] = st
	}
	if s.leader.Load() {
		again = s.writeStatus(ctx, cfg, all, mine, sts, l.recorder)
	}
	var out []config.Service
	for _, svc := range mine {
		addrs := ingressAddrs(svc)
		if len(addrs) == 0 {
			continue
		}
		eps, _ := l.slices.EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
		sort.Slice(eps, func(i, j int) bool { return eps[i].Name < eps[j].Name })
		out = append(out, mapService(svc, addrs, sts[key(svc)], eps, nodes, k)...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	s.mu.Lock()
	changed := !s.haveSent || !reflect.DeepEqual(out, s.offered)
	if changed {
		s.offered, s.haveSent = out, true
	}
	s.mu.Unlock()
	if changed {
		update(out)
		s.log.Debug("offered", "services", len(out))
	}
	s.synced.Store(true)
	return again
}

// settingsOf returns a Service's settings from its annotations. A Service
// whose annotations are bad keeps its last good settings (and is left out
// when it never had any, or when they are snat ones that the file's
// snat.sources no longer serve); the problem is logged and, by the leader,
// made an Event, once per distinct problem.
func (s *Source) settingsOf(svc *corev1.Service, cfg *config.Config, rec record.EventRecorder) (settings, bool) {
	st, err := parseSettings(svc.Annotations, cfg.Maglev.TableSize)
	if err == nil && len(st.IPs) == 0 && svc.Spec.LoadBalancerIP != "" {
		if a, perr := netip.ParseAddr(svc.Spec.LoadBalancerIP); perr == nil {
			st.IPs = []netip.Addr{a}
		}
	}
	snatErr := func(st settings) error {
		return checkSNAT(st, append(ingressAddrs(svc), st.IPs...), wantedFamilies(svc), cfg.SNAT)
	}
	if serr := snatErr(st); serr != nil {
		if err != nil {
			err = fmt.Errorf("%w; %w", err, serr)
		} else {
			err = serr
		}
	}
	k := key(svc)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.lastGood[k] = st
		delete(s.reported, k)
		return st, true
	}
	good, had := s.lastGood[k]
	if had && snatErr(good) != nil {
		// A reload took the SNAT source of its family away: nothing good
		// is left to keep.
		good, had = settings{}, false
	}
	if s.reported[k] != err.Error() {
		s.reported[k] = err.Error()
		s.metrics.badAnnotations.Inc()
		then := "the Service keeps its last good settings"
		if !had {
			then = "the Service is not served"
		}
		s.log.Warn("bad annotation; "+then, "service", k, "err", err)
		if s.leader.Load() {
			rec.Event(svc, corev1.EventTypeWarning, "InvalidAnnotation", err.Error()+"; "+then)
		}
	}
	return good, had
}

// wantedFamilies are the address families a Service asks for: those of
// spec.ipFamilies (IPv4 when unset), only the first with SingleStack.
func wantedFamilies(svc *corev1.Service) []corev1.IPFamily {
	fams := svc.Spec.IPFamilies
	if len(fams) == 0 {
		return []corev1.IPFamily{corev1.IPv4Protocol}
	}
	if svc.Spec.IPFamilyPolicy != nil && *svc.Spec.IPFamilyPolicy == corev1.IPFamilyPolicySingleStack {
		return fams[:1]
	}
	return fams
}

// writeStatus is the leader's work: allocate addresses to the Services of
// the class and write those that changed into their status, with the
// condition; clear the status of Services that left the class.
func (s *Source) writeStatus(ctx context.Context, cfg *config.Config, all, mine []*corev1.Service, sts map[string]settings, rec record.EventRecorder) (again bool) {
	var reqs []request
	for _, svc := range mine {
		st := sts[key(svc)]
		r := request{key: key(svc), labels: svc.Labels, created: svc.CreationTimestamp.Unix(), families: wantedFamilies(svc),
			current: ingressAddrs(svc), want: st.IPs, sharingKey: st.SharingKey}
		for _, p := range svc.Spec.Ports {
			r.ports = append(r.ports, portKey{p.Port, p.Protocol})
		}
		reqs = append(reqs, r)
	}
	allocs := allocate(poolsFor(cfg), reqs)
	byPool := map[string]int{}
	for _, p := range poolsFor(cfg) {
		byPool[p.Name] = 0
	}
	for _, svc := range mine {
		al := allocs[key(svc)]
		for _, p := range al.pools {
			byPool[p]++
		}
		if err := s.setStatus(ctx, svc, al, rec); err != nil {
			again = true
		}
	}
	s.metrics.setAllocations(byPool)
	// Services that left the class (or type LoadBalancer) lose what the
	// leader gave them.
	for _, svc := range all {
		if inClass(svc, cfg.Kubernetes) || meta.FindStatusCondition(svc.Status.Conditions, ConditionAllocated) == nil {
			continue
		}
		c := svc.DeepCopy()
		c.Status.LoadBalancer.Ingress = nil
		meta.RemoveStatusCondition(&c.Status.Conditions, ConditionAllocated)
		if _, err := s.client.CoreV1().Services(c.Namespace).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
			s.log.Warn("clearing the status of a Service that left the class", "service", key(svc), "err", err)
			again = true
		} else {
			s.log.Info("released: the Service left the class", "service", key(svc))
		}
	}
	return again
}

// setStatus writes a Service's addresses and condition when they differ from
// its status.
func (s *Source) setStatus(ctx context.Context, svc *corev1.Service, al allocation, rec record.EventRecorder) error {
	var ingress []corev1.LoadBalancerIngress
	vip := corev1.LoadBalancerIPModeVIP
	for _, a := range al.addrs {
		ingress = append(ingress, corev1.LoadBalancerIngress{IP: a.String(), IPMode: &vip})
	}
	cond := metav1.Condition{Type: ConditionAllocated, Status: metav1.ConditionTrue, Reason: "Allocated", ObservedGeneration: svc.Generation}
	var strs []string
	for _, a := range al.addrs {
		strs = append(strs, a.String())
	}
	cond.Message = "addresses " + strings.Join(strs, ", ")
	if al.problem != "" {
		cond.Status, cond.Reason = metav1.ConditionFalse, "NoAddress"
		cond.Message = al.problem
		if len(strs) > 0 {
			cond.Message = "addresses " + strings.Join(strs, ", ") + "; " + al.problem
		}
	}
	old := meta.FindStatusCondition(svc.Status.Conditions, ConditionAllocated)
	sameCond := old != nil && old.Status == cond.Status && old.Reason == cond.Reason && old.Message == cond.Message && old.ObservedGeneration == cond.ObservedGeneration
	if sameCond && reflect.DeepEqual(normIngress(svc.Status.LoadBalancer.Ingress), ingress) {
		return nil
	}
	c := svc.DeepCopy()
	c.Status.LoadBalancer.Ingress = ingress
	meta.SetStatusCondition(&c.Status.Conditions, cond)
	if _, err := s.client.CoreV1().Services(c.Namespace).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			s.log.Warn("writing a Service's status", "service", key(svc), "err", err)
		}
		return err
	}
	before := ingressAddrs(svc)
	if !slices.Equal(before, al.addrs) {
		s.log.Info("addresses written", "service", key(svc), "addresses", strs, "before", before)
		if len(al.addrs) > 0 {
			rec.Eventf(svc, corev1.EventTypeNormal, "AddressAllocated", "addresses %s", strings.Join(strs, ", "))
		}
	}
	if al.problem != "" && (old == nil || old.Message != cond.Message) {
		s.log.Warn("a Service has no address", "service", key(svc), "why", al.problem)
		rec.Event(svc, corev1.EventTypeWarning, "NoAddress", al.problem)
	}
	return nil
}

// normIngress drops what setStatus does not write, to compare.
func normIngress(in []corev1.LoadBalancerIngress) []corev1.LoadBalancerIngress {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.LoadBalancerIngress, len(in))
	for i, x := range in {
		out[i] = corev1.LoadBalancerIngress{IP: x.IP, IPMode: x.IPMode}
	}
	return out
}
