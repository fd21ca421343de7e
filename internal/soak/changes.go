package soak

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/xdplb/xdplb/internal/controlplane"
)

// changes makes a change, waits Pause, makes the next, until runCtx ends.
// The first round makes every kind of Options.Kinds once, in that order;
// later rounds shuffle them. A change that cannot be made (no spare backend to add, too
// few to remove one) is skipped. Each change runs to its end under ctx (the
// caller's), even when runCtx ends during it, so that nothing is left half
// done.
// settle is the end of a soak without changes.
const settle = 8 * time.Second

func (s *soak) changes(runCtx, ctx context.Context) error {
	order := slices.Clone(s.opts.Kinds)
	for round := 0; ; round++ {
		if round > 0 {
			s.mu.Lock()
			s.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			s.mu.Unlock()
		}
		for _, kind := range order {
			if !sleep(runCtx, s.opts.Pause) {
				return nil
			}
			// No change in the soak's last settle: what a change sets off
			// (a health check taking a backend down, resets) must be seen
			// by the monitor before the outcomes are classified.
			if time.Until(s.tl.Start.Add(s.opts.Duration)) < settle {
				<-runCtx.Done()
				return nil
			}
			if err := s.change(ctx, kind); err != nil {
				return err
			}
		}
	}
}

// change makes one change of kind. Its error is for a soak that cannot go
// on; what goes wrong with the appliance is a problem in the report.
func (s *soak) change(ctx context.Context, kind string) error {
	switch kind {
	case ChangeAdd:
		return s.addBackend(ctx)
	case ChangeRemove:
		return s.removeBackend(ctx)
	case ChangeReweight:
		return s.reweight(ctx)
	case ChangeDrain:
		return s.drain(ctx)
	case ChangeHealthFlap:
		return s.healthFlap(ctx)
	case ChangeServiceAdd:
		return s.addService(ctx)
	case ChangeServiceRemove:
		return s.removeService(ctx)
	case ChangeRestart:
		return s.restart(ctx)
	case ChangeBadReload:
		return s.badReload(ctx)
	case ChangeReloadRestart:
		return s.reloadRestart(ctx)
	}
	return fmt.Errorf("soak: no change %q", kind)
}

// begin records the start of a change; the function it returns records
// its end.
func (s *soak) begin(kind, what string) func() {
	s.snapshot(context.Background())
	s.mu.Lock()
	i := len(s.tl.Changes)
	s.tl.Changes = append(s.tl.Changes, Change{Kind: kind, What: what, Start: time.Now()})
	s.report.Changes[kind]++
	s.mu.Unlock()
	fmt.Fprintf(s.opts.Progress, "soak: +%.1fs %s %s\n", time.Since(s.tl.Start).Seconds(), kind, what)
	return func() {
		s.mu.Lock()
		s.tl.Changes[i].End = time.Now()
		s.mu.Unlock()
		s.snapshot(context.Background())
	}
}

// problem records something the appliance got wrong that is not a
// connection: a good configuration refused, a bad one taken, a backend
// never seen down.
func (s *soak) problem(what string) {
	now := time.Now()
	s.mu.Lock()
	s.problems = append(s.problems, Defect{At: now, Offset: Seconds(now.Sub(s.tl.Start)), What: what, Recent: s.tl.recent(now, 3)})
	s.mu.Unlock()
	fmt.Fprintf(s.opts.Progress, "soak: +%.1fs DEFECT: %s\n", now.Sub(s.tl.Start).Seconds(), what)
}

// apply changes the configuration with edit (under cfgMu), writes the file
// and has the daemon reload it; it returns when the reload began.
func (s *soak) apply(ctx context.Context, edit func()) time.Time {
	s.cfgMu.Lock()
	edit()
	cfg := s.configLocked()
	s.cfgMu.Unlock()
	t0 := time.Now()
	if err := writeAtomically(s.d.cfg, cfg); err != nil {
		s.problem(fmt.Sprintf("writing the configuration: %v", err))
		return t0
	}
	out, err := s.d.cli(ctx, "reload")
	if err != nil || !strings.HasPrefix(out, "reloaded: success") {
		s.problem(fmt.Sprintf("a good configuration was refused: xdplb reload: %v: %s", err, strings.TrimSpace(out)))
	}
	return t0
}

// mainMembers returns the main services' members (the same in each).
func (s *soak) mainMembers() []member {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return slices.Clone(s.main[0].members)
}

func active(ms []member) []member {
	var out []member
	for _, m := range ms {
		if m.weight > 0 {
			out = append(out, m)
		}
	}
	return out
}

func (s *soak) pick(ms []member) member { return ms[s.randN(int64(len(ms)))] }

// busiest returns the member whose server holds the most connections.
func (s *soak) busiest(ms []member) member {
	m, most := ms[0], -1
	for _, c := range ms {
		if n := s.srv.open(c.name); n > most {
			m, most = c, n
		}
	}
	return m
}

// setMain edits every main service's members with fn.
func (s *soak) setMain(fn func([]member) []member) {
	for _, svc := range s.main {
		svc.members = fn(svc.members)
	}
}

func setWeight(name string, w int) func([]member) []member {
	return func(ms []member) []member {
		for i := range ms {
			if ms[i].name == name {
				ms[i].weight = w
			}
		}
		return ms
	}
}

// addBackend adds a spare backend to the main services and waits until its
// health check has brought it up in each.
func (s *soak) addBackend(ctx context.Context) error {
	var spares []string
	s.cfgMu.Lock()
	for name, b := range s.backends {
		if b.spareNow {
			spares = append(spares, name)
		}
	}
	s.cfgMu.Unlock()
	if len(spares) == 0 {
		return nil
	}
	slices.Sort(spares)
	name := spares[s.randN(int64(len(spares)))]
	defer s.begin(ChangeAdd, name)()
	t0 := s.apply(ctx, func() {
		s.backends[name].spareNow = false
		s.setMain(func(ms []member) []member { return append(ms, member{name: name, weight: 1}) })
	})
	s.mu.Lock()
	for i, g := range s.tl.Gone {
		if g.Backend == name && g.Why == "removed" && g.To.IsZero() {
			s.tl.Gone[i].To = t0
		}
	}
	s.mu.Unlock()
	for _, svc := range s.main {
		s.waitHealth(ctx, svc.name, name, "up")
	}
	return nil
}

// removeBackend removes a backend from the main services, keeping at least
// two that take new flows: the one with the most connections, so that the
// removal is seen to break them (a backend flapped a moment ago may have
// none left).
func (s *soak) removeBackend(ctx context.Context) error {
	ms := s.mainMembers()
	var cands []member
	for _, m := range ms {
		if len(active(ms))-min(m.weight, 1) >= 2 {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	m := s.busiest(cands)
	defer s.begin(ChangeRemove, m.name)()
	// The backend is gone from the moment the file changes: its flows may
	// break from then on.
	s.mu.Lock()
	now := time.Now()
	for _, svc := range s.main {
		s.tl.Gone = append(s.tl.Gone, Gone{Service: svc.name, Backend: m.name, From: now, Why: "removed"})
	}
	s.mu.Unlock()
	s.apply(ctx, func() {
		s.backends[m.name].spareNow = true
		s.setMain(func(ms []member) []member {
			return slices.DeleteFunc(ms, func(x member) bool { return x.name == m.name })
		})
	})
	return nil
}

// reweight gives a backend of the main services another weight from 1 to 3
// (a drained one is so put back).
func (s *soak) reweight(ctx context.Context) error {
	m := s.pick(s.mainMembers())
	w := 1 + int(s.randN(3))
	if w == m.weight {
		w = w%3 + 1
	}
	defer s.begin(ChangeReweight, fmt.Sprintf("%s %d->%d", m.name, m.weight, w))()
	s.apply(ctx, func() { s.setMain(setWeight(m.name, w)) })
	return nil
}

// drain sets a backend's weight to 0, keeping at least two that take new
// flows; its established flows must stay.
func (s *soak) drain(ctx context.Context) error {
	act := active(s.mainMembers())
	if len(act) < 3 {
		return nil
	}
	m := s.pick(act)
	defer s.begin(ChangeDrain, m.name)()
	s.apply(ctx, func() { s.setMain(setWeight(m.name, 0)) })
	return nil
}

// healthFlap stops the listener of a backend that takes new flows (the one
// with the most connections), so that its health checks fail, waits until
// every service it is in has it down, and starts the listener again until it
// is up again everywhere.
func (s *soak) healthFlap(ctx context.Context) error {
	act := active(s.mainMembers())
	if len(act) < 3 {
		return nil
	}
	m := s.busiest(act)
	var svcs []string
	s.cfgMu.Lock()
	for _, svc := range append(slices.Clone(s.main), s.churn...) {
		if svc.has(m.name) {
			svcs = append(svcs, svc.name)
		}
	}
	s.cfgMu.Unlock()
	defer s.begin(ChangeHealthFlap, m.name)()
	s.mu.Lock()
	i := len(s.tl.Stopped)
	s.tl.Stopped = append(s.tl.Stopped, Stopped{Backend: m.name, Services: svcs, From: time.Now()})
	s.mu.Unlock()
	s.srv.stop(m.name)
	for _, svc := range svcs {
		s.waitHealth(ctx, svc, m.name, "down")
	}
	// Down for a while: the connections it had must break at once, and
	// an echo it still answered would show.
	sleep(ctx, 4*time.Second)
	err := s.srv.listen(m.name)
	s.mu.Lock()
	s.tl.Stopped[i].To = time.Now()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("soak: starting %s's listener again: %w", m.name, err)
	}
	for _, svc := range svcs {
		s.waitHealth(ctx, svc, m.name, "up")
	}
	return nil
}

// addService adds a churn service over three of the main services' active
// backends; once they are all up, short connections go to it too.
func (s *soak) addService(ctx context.Context) error {
	s.cfgMu.Lock()
	if len(s.churn) >= 3 {
		s.cfgMu.Unlock()
		return nil
	}
	k := s.churnN
	s.churnN++
	s.cfgMu.Unlock()
	act := active(s.mainMembers())
	var ms []member
	for _, i := range s.permutation(len(act))[:min(3, len(act))] {
		ms = append(ms, member{name: act[i].name, weight: 1})
	}
	n := byte(10 + k%churnVIPs)
	vip := netip.AddrFrom4([4]byte{198, 18, 100, n})
	if k%2 == 1 {
		a := netip.MustParseAddr("2001:db8:100::").As16()
		a[15] = n
		vip = netip.AddrFrom16(a)
	}
	encap := []string{"none", "ipip"}[(k/2)%2]
	svc := &service{name: fmt.Sprintf("churn-%d", k), vip: vip, encap: encap, churn: true, members: ms}
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	defer s.begin(ChangeServiceAdd, fmt.Sprintf("%s %s encap %s over %s", svc.name, svc.vipPort(), encap, strings.Join(names, ",")))()
	s.apply(ctx, func() { s.churn = append(s.churn, svc) })
	for _, m := range ms {
		s.waitHealth(ctx, svc.name, m.name, "up")
	}
	s.cfgMu.Lock()
	s.dialable = append(s.dialable, svc)
	s.inflight[svc.name] = &sync.WaitGroup{}
	s.cfgMu.Unlock()
	return nil
}

// removeService removes the oldest churn service: no new connections go to
// it, those under way end, then it leaves the file.
func (s *soak) removeService(ctx context.Context) error {
	s.cfgMu.Lock()
	if len(s.churn) == 0 {
		s.cfgMu.Unlock()
		return nil
	}
	svc := s.churn[0]
	s.dialable = slices.DeleteFunc(s.dialable, func(x *service) bool { return x == svc })
	inflight := s.inflight[svc.name]
	delete(s.inflight, svc.name)
	s.cfgMu.Unlock()
	defer s.begin(ChangeServiceRemove, fmt.Sprintf("%s %s", svc.name, svc.vipPort()))()
	if inflight != nil {
		done := make(chan struct{})
		go func() { inflight.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * dialTimeout):
			s.problem(fmt.Sprintf("connections to %s still under way %v after it stopped taking new ones", svc.name, 2*dialTimeout))
		}
	}
	s.mu.Lock()
	now := time.Now()
	for _, m := range svc.members {
		s.tl.Gone = append(s.tl.Gone, Gone{Service: svc.name, Backend: m.name, From: now, Why: "service removed"})
	}
	s.mu.Unlock()
	s.apply(ctx, func() { s.churn = slices.DeleteFunc(s.churn, func(x *service) bool { return x == svc }) })
	return nil
}

// restart stops the daemon with SIGTERM, leaves the datapath alone for a
// second, and starts it again: it must take over the pinned datapath.
func (s *soak) restart(ctx context.Context) error {
	defer s.begin(ChangeRestart, "SIGTERM, 1 s without a daemon, start")()
	return s.restartDaemon(ctx, time.Second)
}

// restartDaemon stops the daemon with SIGTERM, waits pause and starts it
// again; the new one must take over the pinned attachment.
func (s *soak) restartDaemon(ctx context.Context, pause time.Duration) error {
	if err := s.d.stop(); err != nil {
		s.problem(fmt.Sprintf("stopping the daemon: %v", err))
	}
	if pause > 0 {
		sleep(ctx, pause)
	}
	if err := s.d.start(ctx); err != nil {
		return fmt.Errorf("soak: restarting the daemon: %w", err)
	}
	if !s.d.logContains("reused=true") {
		s.problem("the restarted daemon did not take over the pinned attachment (no reused=true in its log)")
	}
	s.mu.Lock()
	s.report.Restarts++
	s.mu.Unlock()
	return nil
}

// reloadRestart reweights a backend and restarts the daemon at once, as an
// operator's `systemctl reload xdplb && systemctl restart xdplb` does: the
// flows whose slot moved have had no time to send a packet before the
// restart, so their pins, if any, are made under the new daemon.
func (s *soak) reloadRestart(ctx context.Context) error {
	m := s.pick(s.mainMembers())
	w := 1 + int(s.randN(3))
	if w == m.weight {
		w = w%3 + 1
	}
	defer s.begin(ChangeReloadRestart, fmt.Sprintf("reweight %s %d->%d, then at once SIGTERM and start", m.name, m.weight, w))()
	s.apply(ctx, func() { s.setMain(setWeight(m.name, w)) })
	return s.restartDaemon(ctx, 0)
}

// badReload writes a configuration the daemon must refuse and asks it to
// reload: the reload must fail and the running configuration stay; then the
// good file goes back.
func (s *soak) badReload(ctx context.Context) error {
	s.mu.Lock()
	bad := badConfigs[s.report.Changes[ChangeBadReload]%len(badConfigs)]
	s.mu.Unlock()
	defer s.begin(ChangeBadReload, bad.what)()
	var before controlplane.StatusInfo
	if err := s.d.json(ctx, &before, "status"); err != nil {
		s.problem(fmt.Sprintf("xdplb status before a bad reload: %v", err))
		return nil
	}
	s.cfgMu.Lock()
	good := s.configLocked()
	s.cfgMu.Unlock()
	broken := bad.edit(good)
	if broken == good {
		return fmt.Errorf("soak: bad configuration %q: the edit did not apply", bad.what)
	}
	if err := writeAtomically(s.d.cfg, broken); err != nil {
		return err
	}
	out, err := s.d.cli(ctx, "reload")
	var after controlplane.StatusInfo
	serr := s.d.json(ctx, &after, "status")
	switch {
	case err == nil || !strings.Contains(out, "reload failed"):
		s.problem(fmt.Sprintf("a configuration with %s was not refused: xdplb reload: %v: %s", bad.what, err, strings.TrimSpace(out)))
	case serr != nil:
		s.problem(fmt.Sprintf("xdplb status after a bad reload: %v", serr))
	case after.LastReload.Result != "failure" || after.Config.SHA256 != before.Config.SHA256:
		s.problem(fmt.Sprintf("after a refused reload (%s), status shows last reload %q and config %.12s (was %.12s)",
			bad.what, after.LastReload.Result, after.Config.SHA256, before.Config.SHA256))
	}
	// Let the refused file stand for a moment: the old configuration
	// keeps serving meanwhile (the connections say whether it does).
	sleep(ctx, 500*time.Millisecond)
	s.apply(ctx, func() {})
	return nil
}

// waitHealth waits until `xdplb backends` shows backend in service in state
// (up, down), or records a problem after waitHealth.
func (s *soak) waitHealth(ctx context.Context, service, backend, state string) {
	if err := s.awaitHealth(ctx, service, backend, state); err != nil {
		s.problem(err.Error())
	}
}

func (s *soak) awaitHealth(ctx context.Context, service, backend, state string) error {
	deadline := time.Now().Add(waitHealth)
	last := "not listed"
	for {
		var bs []controlplane.BackendInfo
		if err := s.d.json(ctx, &bs, "backends"); err == nil {
			for _, b := range bs {
				if b.Service == service && s.names[hostOf(b.Address)] == backend {
					last = healthState(b)
				}
			}
			if last == state {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not %s in %s after %v (it is %s)", backend, state, service, waitHealth, last)
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return errors.Join(ctx.Err(), fmt.Errorf("waiting for %s to be %s in %s", backend, state, service))
		}
	}
}

func healthState(b controlplane.BackendInfo) string {
	if b.Health == nil {
		if b.Healthy {
			return "up"
		}
		return "down"
	}
	return b.Health.State
}

// hostOf strips a port from ADDR or ADDR:PORT.
func hostOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().String()
	}
	return addr
}

func (s *soak) permutation(n int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Perm(n)
}

// monitor polls `xdplb backends` and records when the health checks took a
// backend down in a service, and when they brought it back, with the times
// the daemon gives.
func (s *soak) monitor(ctx context.Context) {
	for sleep(ctx, 300*time.Millisecond) {
		var bs []controlplane.BackendInfo
		if err := s.d.json(ctx, &bs, "backends"); err != nil {
			continue // restarting
		}
		now := time.Now()
		s.mu.Lock()
		seen := map[[2]string]bool{}
		for _, b := range bs {
			name := s.names[hostOf(b.Address)]
			key := [2]string{b.Service, name}
			seen[key] = true
			state := healthState(b)
			since := now
			if b.Health != nil && !b.Health.Since.IsZero() {
				since = b.Health.Since
			}
			h, ok := s.health[key]
			if !ok {
				h.goneIdx = -1
			}
			switch {
			case state == "down" && h.goneIdx < 0:
				s.tl.Gone = append(s.tl.Gone, Gone{Service: b.Service, Backend: name, From: since, Why: "down"})
				h.goneIdx = len(s.tl.Gone) - 1
				if !s.stoppedAt(name, since) && h.state == "up" {
					s.report.UnplannedDowns = append(s.report.UnplannedDowns, fmt.Sprintf("+%.1fs %s in %s: %s",
						since.Sub(s.tl.Start).Seconds(), name, b.Service, lastError(b)))
					fmt.Fprintf(s.opts.Progress, "soak: +%.1fs %s went down in %s without the soak stopping it: %s\n",
						since.Sub(s.tl.Start).Seconds(), name, b.Service, lastError(b))
				}
			case state != "down" && h.goneIdx >= 0:
				s.tl.Gone[h.goneIdx].To = since
				h.goneIdx = -1
			}
			h.state = state
			s.health[key] = h
		}
		for key, h := range s.health {
			if !seen[key] {
				if h.goneIdx >= 0 {
					s.tl.Gone[h.goneIdx].To = now
				}
				delete(s.health, key)
			}
		}
		s.mu.Unlock()
	}
}

func lastError(b controlplane.BackendInfo) string {
	if b.Health == nil || b.Health.LastError == "" {
		return "no error given"
	}
	return b.Health.LastError
}

// stoppedAt reports whether the soak had stopped backend's listener at t.
func (s *soak) stoppedAt(backend string, t time.Time) bool {
	for _, st := range s.tl.Stopped {
		if st.Backend == backend && !st.From.After(t) && (st.To.IsZero() || !st.To.Before(t.Add(-limits.Slack))) {
			return true
		}
	}
	return false
}
