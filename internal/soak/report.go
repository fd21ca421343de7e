package soak

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Report is what a soak saw.
type Report struct {
	Started  time.Time `json:"started"`
	Duration Seconds   `json:"duration_s"`
	VIPs     []string  `json:"vips"`
	Backends int       `json:"backends"`
	// Connections opened (the backend's greeting read); DialFailed is
	// every new connection that did not get that far, expected or not.
	LongOpened   int64 `json:"long_opened"`
	ShortOpened  int64 `json:"short_opened"`
	DialFailed   int64 `json:"dial_failed"`
	ShortSkipped int64 `json:"short_skipped,omitempty"` // ticks missed: too many connections under way
	Echoes       int64 `json:"echoes"`
	// Changes made, by kind.
	Changes  map[string]int `json:"changes"`
	Restarts int            `json:"restarts"`
	// BrokenExpected are connections that broke, or could not open, for
	// a reason the classification accepts: ExpectedBy counts them by it.
	BrokenExpected int            `json:"broken_expected"`
	ExpectedBy     map[string]int `json:"expected_by"`
	// ExpectedHow counts them by how they broke (reset, refused, …).
	ExpectedHow map[string]int `json:"expected_how"`
	// MaxBreakDelay is the longest time from a backend's removal or
	// going down to the break of a connection on it.
	MaxBreakDelay Seconds `json:"max_break_delay_s"`
	// UnplannedDowns are backends the health checks took down without
	// the soak stopping their listener (a slow machine can do that).
	UnplannedDowns []string `json:"unplanned_downs,omitempty"`
	// MaxStall is the longest time the soak's own goroutines woke late
	// (its servers and clients then ran late too).
	MaxStall Seconds  `json:"max_stall_s"`
	Defects  []Defect `json:"defects"`
	// Evidence is a directory with the daemon's log and the timeline,
	// kept when there are defects.
	Evidence string `json:"evidence,omitempty"`
	// Counters are the datapath's drop reasons and events that moved
	// during the soak (from /metrics; pin_hit and tcp_syn left out).
	Counters map[string]float64 `json:"datapath_counters"`
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "soak: %v, %d backends, VIPs: %s\n", time.Duration(r.Duration).Round(time.Second), r.Backends, strings.Join(r.VIPs, "; "))
	fmt.Fprintf(w, "connections opened: %d long-lived, %d short; %d new connections failed (classified below)", r.LongOpened, r.ShortOpened, r.DialFailed)
	if r.ShortSkipped > 0 {
		fmt.Fprintf(w, "; %d short ones skipped (too many under way)", r.ShortSkipped)
	}
	fmt.Fprintf(w, "\nechoes: %d\n", r.Echoes)
	total := 0
	var parts []string
	for _, k := range ChangeKinds {
		total += r.Changes[k]
		parts = append(parts, fmt.Sprintf("%s %d", k, r.Changes[k]))
	}
	fmt.Fprintf(w, "changes: %d (%s)\n", total, strings.Join(parts, ", "))
	fmt.Fprintf(w, "restarts: %d\n", r.Restarts)
	fmt.Fprintf(w, "broken, expected: %d", r.BrokenExpected)
	if r.BrokenExpected > 0 {
		parts = []string{formatCounts(r.ExpectedBy)}
		fmt.Fprintf(w, " (%s; as %s); slowest break %.2fs after its change", strings.Join(parts, ", "), formatCounts(r.ExpectedHow), time.Duration(r.MaxBreakDelay).Seconds())
	}
	fmt.Fprintln(w)
	if len(r.UnplannedDowns) > 0 {
		fmt.Fprintf(w, "health downs the soak did not cause: %d\n", len(r.UnplannedDowns))
		for _, u := range r.UnplannedDowns {
			fmt.Fprintf(w, "  %s\n", u)
		}
	}
	fmt.Fprintf(w, "the soak's own longest stall: %.2fs\n", time.Duration(r.MaxStall).Seconds())
	fmt.Fprintf(w, "datapath counters that moved: %s\n", formatCounters(r.Counters))
	fmt.Fprintf(w, "defects: %d\n", len(r.Defects))
	for _, d := range r.Defects {
		fmt.Fprintf(w, "  %s\n", d.Line)
	}
	if r.Evidence != "" {
		fmt.Fprintf(w, "the daemon's log and the timeline: %s\n", r.Evidence)
	}
}

func formatCounts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func formatCounters(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %+.0f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
