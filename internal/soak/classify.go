package soak

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Kind is how a connection ended.
type Kind string

// The kinds of Outcome.
const (
	// Ended: the connection worked until the soak closed it.
	Ended Kind = "ended"
	// Broke: the connection had been answered by a backend, then an
	// echo failed.
	Broke Kind = "broke"
	// DialFailed: no backend answered: the connection was refused, reset
	// before the backend's greeting, or timed out.
	DialFailed Kind = "dial-failed"
	// Mismatch: an echo came back from another backend than the one that
	// greeted the connection, or with other bytes than were sent.
	Mismatch Kind = "mismatch"
)

// Outcome is what happened to one connection the soak made.
type Outcome struct {
	Kind    Kind
	Long    bool   // a long-lived connection, else a short one
	Service string // the service the VIP belongs to
	VIP     string // ADDR:PORT
	// Backend is the name of the backend that greeted the connection;
	// empty when none did.
	Backend string
	// Client is the connection's own address and port, when it opened.
	Client  string
	Started time.Time // when the dial began
	At      time.Time // when it ended
	// Err is the class of the error that ended it (ErrReset, …); empty
	// for Ended.
	Err     string
	ErrText string
	// Got is, for Mismatch, what the echo came back with.
	Got string
	// Echoes are the send times of the echoes the backend answered.
	Echoes []time.Time
}

// The classes of Outcome.Err.
const (
	ErrReset       = "reset"       // ECONNRESET: a RST
	ErrRefused     = "refused"     // ECONNREFUSED: a RST to the SYN
	ErrTimeout     = "timeout"     // no answer in time
	ErrEOF         = "eof"         // the peer closed (FIN)
	ErrUnreachable = "unreachable" // an ICMP error
	ErrOther       = "other"
)

// Gone is a time during which a backend took no flows of a service: it was
// removed from it (or the service was removed), or its health check had
// taken it down. To is zero while it lasts.
type Gone struct {
	Service, Backend string
	From, To         time.Time
	Why              string // "removed", "service removed", "down"
}

// Stopped is a time during which the soak had stopped a backend's listener
// (to fail its health check), with the services the backend was in.
type Stopped struct {
	Backend  string
	Services []string
	From, To time.Time
}

// Change is one change the soak made, from Start until it was done.
type Change struct {
	Kind       string
	What       string
	Start, End time.Time
}

// Timeline is what happened during a soak, as the classification needs it.
type Timeline struct {
	Start   time.Time
	Gone    []Gone
	Stopped []Stopped
	Changes []Change
}

// Limits of the classification.
type Limits struct {
	// FastBreak is how soon after its backend was removed or went down a
	// connection must break to count as expected (a reset from the
	// backend its packets now reach).
	FastBreak time.Duration
	// Stale is how long after its backend was removed or went down an
	// echo may still be answered by it: the time the daemon takes to
	// apply the change. An echo sent later and answered by it is a defect.
	Stale time.Duration
	// Slack is how far the soak's records and the daemon's may disagree
	// in time: a change recorded slightly after a break it caused, a new
	// connection that started just before a change.
	Slack time.Duration
}

// Expected is a break the classification found explained.
type Expected struct {
	Service, Backend string
	Long             bool
	Why              string // "removed", "service removed", "down", "listener stopped"
	Err              string // how it broke: ErrReset, ErrRefused, …
	// Delay is the time from the change to the break; zero for
	// refused connections.
	Delay time.Duration
}

// Defect is an outcome nothing explains.
type Defect struct {
	At       time.Time `json:"at"`
	Offset   Seconds   `json:"offset_s"`
	Service  string    `json:"service"`
	VIP      string    `json:"vip"`
	Backend  string    `json:"backend,omitempty"`
	Long     bool      `json:"long"`
	What     string    `json:"what"`
	Recent   []string  `json:"recent_changes"`
	Counters string    `json:"datapath_counters,omitempty"`
	// SoakStall is the soak's own longest stall in the 6 s before the
	// defect (watchStalls): over a second or two, the soak's servers or
	// clients may have caused it.
	SoakStall Seconds `json:"soak_stall_s,omitempty"`
	Line      string  `json:"line"`
}

// Seconds is a duration that marshals as seconds.
type Seconds time.Duration

// MarshalJSON writes the duration in seconds, to the millisecond.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", time.Duration(s).Seconds())), nil
}

// Classify sorts outcomes into expected breaks and defects.
func Classify(outcomes []Outcome, tl *Timeline, lim Limits) (expected []Expected, defects []Defect) {
	// Connections by client address and port, to name an earlier one a
	// defective connection shares its 4-tuple with.
	byClient := map[[2]string][]int{}
	for i, o := range outcomes {
		if o.Client != "" {
			k := [2]string{o.VIP, o.Client}
			byClient[k] = append(byClient[k], i)
		}
	}
	defect := func(o Outcome, at time.Time, what string) {
		if o.Client != "" {
			var prev *Outcome
			for _, i := range byClient[[2]string{o.VIP, o.Client}] {
				if p := &outcomes[i]; p.Started.Before(o.Started) && (prev == nil || p.Started.After(prev.Started)) {
					prev = p
				}
			}
			if prev != nil {
				how := string(prev.Kind)
				if prev.Err != "" {
					how += " (" + prev.Err + ")"
				}
				what += fmt.Sprintf("; its 4-tuple (client %s) was used before by a connection opened +%.1fs on %s that %s +%.1fs",
					o.Client, prev.Started.Sub(tl.Start).Seconds(), prev.Backend, how, prev.At.Sub(tl.Start).Seconds())
			}
		}
		d := Defect{At: at, Offset: Seconds(at.Sub(tl.Start)), Service: o.Service, VIP: o.VIP, Backend: o.Backend, Long: o.Long, What: what}
		d.Recent = tl.recent(at, 3)
		defects = append(defects, d)
	}
	for _, o := range outcomes {
		kind := "short"
		if o.Long {
			kind = "long"
		}
		// An echo answered by a backend that had been gone for longer
		// than Stale: the datapath still sent the flow there.
		if o.Backend != "" {
			if g, te, ok := tl.answeredWhileGone(o, lim.Stale); ok {
				defect(o, te, fmt.Sprintf("%s connection still answered by %s %.1fs after it was %s (%s)%s",
					kind, o.Backend, te.Sub(g.From).Seconds(), g.Why, g.From.Format("15:04:05.000"), o.life(tl)))
			}
		}
		switch o.Kind {
		case Ended:
		case Mismatch:
			defect(o, o.At, fmt.Sprintf("%s connection greeted by %s got an echo back as %q", kind, o.Backend, o.Got))
		case Broke:
			g, ok := tl.goneFor(o.Service, o.Backend, o.Started.Add(-lim.Slack), o.At.Add(lim.Slack))
			switch {
			case ok && o.Err == ErrTimeout:
				// Its packets now reach a backend that must reset
				// it; silence is a black hole.
				defect(o, o.At, fmt.Sprintf("%s connection on %s timed out (%s) after %s was %s (%s): want a reset%s",
					kind, o.Backend, o.errString(), o.Backend, g.Why, g.From.Format("15:04:05.000"), o.life(tl)))
			case ok && max(o.At.Sub(g.From), 0) <= lim.FastBreak:
				expected = append(expected, Expected{Service: o.Service, Backend: o.Backend, Long: o.Long, Why: g.Why, Err: o.Err, Delay: max(o.At.Sub(g.From), 0)})
			case ok:
				defect(o, o.At, fmt.Sprintf("%s connection on %s broke (%s) %.1fs after %s was %s (%s): want a reset within %v%s",
					kind, o.Backend, o.errString(), o.At.Sub(g.From).Seconds(), o.Backend, g.Why, g.From.Format("15:04:05.000"), lim.FastBreak, o.life(tl)))
			default:
				defect(o, o.At, fmt.Sprintf("%s connection on %s broke (%s) after %.1fs, with %s configured and up%s%s",
					kind, o.Backend, o.errString(), o.At.Sub(o.Started).Seconds(), o.Backend, tl.during(o.At), o.life(tl)))
			}
		case DialFailed:
			if o.Err == ErrRefused {
				if st, ok := tl.refusedBy(o, lim.Slack); ok {
					expected = append(expected, Expected{Service: o.Service, Backend: st.Backend, Long: o.Long, Why: "listener stopped", Err: o.Err})
					continue
				}
			}
			if o.Err == ErrReset || o.Err == ErrEOF {
				// A listener closed with the connection in its
				// accept queue resets it.
				if st, ok := tl.stoppedDuring(o, lim.Slack); ok {
					expected = append(expected, Expected{Service: o.Service, Backend: st.Backend, Long: o.Long, Why: "listener stopped", Err: o.Err})
					continue
				}
				if g, ok := tl.goneAny(o.Service, o.Started.Add(-lim.Slack), o.At.Add(lim.Slack)); ok && o.At.Sub(g.From) <= lim.FastBreak {
					expected = append(expected, Expected{Service: o.Service, Backend: g.Backend, Long: o.Long, Why: g.Why, Err: o.Err, Delay: max(o.At.Sub(g.From), 0)})
					continue
				}
			}
			defect(o, o.At, fmt.Sprintf("new %s connection failed (%s) after %.1fs, with the VIP's backends up%s",
				kind, o.errString(), o.At.Sub(o.Started).Seconds(), tl.during(o.At)))
		}
	}
	slices.SortFunc(defects, func(a, b Defect) int { return a.At.Compare(b.At) })
	for i := range defects {
		defects[i].Line = defects[i].String()
	}
	return expected, defects
}

// life says when the connection opened, and its echoes.
func (o Outcome) life(tl *Timeline) string {
	s := fmt.Sprintf("; opened +%.1fs, %d echoes", o.Started.Sub(tl.Start).Seconds(), len(o.Echoes))
	if n := len(o.Echoes); n > 0 {
		s += fmt.Sprintf(", the last sent +%.1fs", o.Echoes[n-1].Sub(tl.Start).Seconds())
	}
	return s
}

func (o Outcome) errString() string {
	if o.ErrText == "" || o.ErrText == o.Err {
		return o.Err
	}
	return o.Err + ": " + o.ErrText
}

// goneFor returns the first time backend left service within [from, to].
func (tl *Timeline) goneFor(service, backend string, from, to time.Time) (Gone, bool) {
	for _, g := range tl.Gone {
		if g.Service == service && g.Backend == backend && !g.From.Before(from) && !g.From.After(to) {
			return g, true
		}
	}
	return Gone{}, false
}

// goneAny returns the first time any backend left service within [from, to].
func (tl *Timeline) goneAny(service string, from, to time.Time) (Gone, bool) {
	for _, g := range tl.Gone {
		if g.Service == service && !g.From.Before(from) && !g.From.After(to) {
			return g, true
		}
	}
	return Gone{}, false
}

// answeredWhileGone finds an echo of o answered while its backend had been
// gone from o's service for longer than limit.
func (tl *Timeline) answeredWhileGone(o Outcome, limit time.Duration) (Gone, time.Time, bool) {
	for _, g := range tl.Gone {
		if g.Service != o.Service || g.Backend != o.Backend {
			continue
		}
		for _, te := range o.Echoes {
			if te.After(g.From.Add(limit)) && (g.To.IsZero() || te.Before(g.To)) {
				return g, te, true
			}
		}
	}
	return Gone{}, time.Time{}, false
}

// refusedBy explains a refused connection: a backend of its service had its
// listener stopped, and its health check had not yet taken it out of the
// service (give or take slack) when the connection began.
func (tl *Timeline) refusedBy(o Outcome, slack time.Duration) (Stopped, bool) {
	for _, st := range tl.Stopped {
		if !slices.Contains(st.Services, o.Service) || st.From.After(o.At) || (!st.To.IsZero() && st.To.Before(o.Started)) {
			continue
		}
		down := false
		for _, g := range tl.Gone {
			if g.Service == o.Service && g.Backend == st.Backend && !g.From.Before(st.From) && g.From.Add(slack).Before(o.Started) {
				down = true
				break
			}
		}
		if !down {
			return st, true
		}
	}
	return Stopped{}, false
}

// stoppedDuring finds a listener of o's service stopped while o was being
// opened (give or take slack).
func (tl *Timeline) stoppedDuring(o Outcome, slack time.Duration) (Stopped, bool) {
	for _, st := range tl.Stopped {
		if slices.Contains(st.Services, o.Service) && !st.From.Before(o.Started.Add(-slack)) && !st.From.After(o.At.Add(slack)) {
			return st, true
		}
	}
	return Stopped{}, false
}

// recent describes the last n changes begun by at.
func (tl *Timeline) recent(at time.Time, n int) []string {
	var out []string
	for _, c := range tl.Changes {
		if c.Start.After(at) {
			break
		}
		s := fmt.Sprintf("+%.1fs %s %s", c.Start.Sub(tl.Start).Seconds(), c.Kind, c.What)
		if c.End.IsZero() || c.End.After(at) {
			s += " (in progress)"
		} else {
			s += fmt.Sprintf(" (done +%.1fs)", c.End.Sub(tl.Start).Seconds())
		}
		out = append(out, s)
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// during names the change in progress at at, if any.
func (tl *Timeline) during(at time.Time) string {
	for _, c := range tl.Changes {
		if !c.Start.After(at) && (c.End.IsZero() || !c.End.Before(at)) {
			return fmt.Sprintf(", during %s %s", c.Kind, c.What)
		}
	}
	return ""
}

// String is the defect in one line: time, VIP, backend, what happened and
// the last changes before it.
func (d Defect) String() string {
	b := d.Backend
	if b == "" {
		b = "-"
	}
	s := fmt.Sprintf("%s (+%.1fs) %s %s %s: %s", d.At.Format("15:04:05.000"), time.Duration(d.Offset).Seconds(), d.Service, d.VIP, b, d.What)
	if len(d.Recent) > 0 {
		s += "; last changes: " + strings.Join(d.Recent, "; ")
	}
	if d.Counters != "" {
		s += "; datapath counters that moved around it: " + d.Counters
	}
	if st := time.Duration(d.SoakStall); st >= 500*time.Millisecond {
		s += fmt.Sprintf("; the soak itself stalled %.1fs in the 6 s before it", st.Seconds())
	}
	return s
}
