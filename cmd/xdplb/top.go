package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/xdplb/xdplb/internal/controlplane"
	"golang.org/x/term"
)

// xdplb top: a live view of the rates of every VIP and backend, refreshed
// each interval from two samples of the daemon's counters ("top" on the
// control socket). In a terminal it is a full-screen view drawn with tcell;
// otherwise (or with --once) plain text.

// topSorts are the orders the view offers: key, column, name.
var topSorts = []struct {
	key  rune
	name string
}{
	{'p', "packets"}, {'b', "bits"}, {'n', "new"}, {'d', "drops"}, {'v', "vip"},
}

func runTop(ctx context.Context, args []string, out io.Writer) error {
	c := newCLICommand("top", "xdplb top [--once] [--interval D] [--sort packets|bits|new|drops|vip] [--socket PATH]",
		"A live view of the datapath, refreshed every interval: per VIP and per backend the\n"+
			"packets/s, bits/s, new flows/s (TCP SYNs) and drops/s, with each backend's health,\n"+
			"and the datapath's drops/s by reason. Keys: p b n d v sort by packets, bits, new\n"+
			"flows, drops, VIP; q (or Esc, Ctrl-C) quits. When the output is not a terminal it\n"+
			"prints a plain table every interval; --once prints one and exits.")
	once := c.fs.Bool("once", false, "print one plain table (rates over one interval) and exit")
	interval := c.fs.Duration("interval", time.Second, "time between samples")
	sortBy := c.fs.String("sort", "packets", "order of the rows: packets, bits, new, drops or vip")
	pos, err := c.parse(args, out)
	if err != nil {
		return helpIsNoError(err)
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if c.output != "table" {
		return usageError{"top: -o json is not supported; use xdplb vips -o json or the metrics"}
	}
	if *interval < 10*time.Millisecond {
		return usageError{fmt.Sprintf("top: --interval %v: want 10ms or more", *interval)}
	}
	if !validSort(*sortBy) {
		return usageError{fmt.Sprintf("top: --sort %q: want packets, bits, new, drops or vip", *sortBy)}
	}
	fetch := func(ctx context.Context) (TopInfo, error) {
		var t TopInfo
		err := controlplane.Call(ctx, c.socket, Request{Command: "top"}, &t)
		return t, err
	}
	if f, ok := out.(*os.File); ok && !*once && term.IsTerminal(int(f.Fd())) {
		screen, err := tcell.NewScreen()
		if err != nil {
			return fmt.Errorf("top: %w", err)
		}
		return topScreen(ctx, screen, fetch, *interval, *sortBy, c.socket, nil)
	}
	return topPlain(ctx, out, fetch, *interval, *sortBy, *once)
}

func validSort(name string) bool {
	for _, s := range topSorts {
		if s.name == name {
			return true
		}
	}
	return false
}

// topPlain prints a table every interval (once: one, then returns).
func topPlain(ctx context.Context, out io.Writer, fetch func(context.Context) (TopInfo, error), interval time.Duration, sortBy string, once bool) error {
	prev, err := fetch(ctx)
	if err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for first := true; ; first = false {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !first {
			fmt.Fprintln(out)
		}
		if _, err := io.WriteString(out, strings.Join(topRates(prev, cur).lines(sortBy), "\n")+"\n"); err != nil {
			return err
		}
		if once {
			return nil
		}
		prev = cur
	}
}

// topScreen runs the full-screen view on screen until a quit key or ctx.
// drawn, when set (tests), is called after each drawing.
func topScreen(ctx context.Context, screen tcell.Screen, fetch func(context.Context) (TopInfo, error), interval time.Duration, sortBy, socket string, drawn func()) error {
	if err := screen.Init(); err != nil {
		return fmt.Errorf("top: %w", err)
	}
	defer screen.Fini()
	events := make(chan tcell.Event, 16)
	quit := make(chan struct{})
	defer close(quit)
	go screen.ChannelEvents(events, quit)

	prev, err := fetch(ctx)
	if err != nil {
		return err
	}
	var view *topView
	status := "sampling…"
	draw := func() {
		screen.Clear()
		w, h := screen.Size()
		head := fmt.Sprintf("xdplb top  %s  every %v  sort: %s  (p b n d v: sort, q: quit)", socket, interval, sortBy)
		put(screen, 0, 0, w, head, tcell.StyleDefault.Bold(true))
		if view == nil {
			put(screen, 0, 2, w, status, tcell.StyleDefault)
		} else {
			for i, l := range view.lines(sortBy) {
				if i+2 >= h {
					break
				}
				style := tcell.StyleDefault
				if i == 0 {
					style = style.Reverse(true)
				}
				put(screen, 0, i+2, w, l, style)
			}
		}
		screen.Show()
		if drawn != nil {
			drawn()
		}
	}
	draw()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			switch ev := ev.(type) {
			case *tcell.EventResize:
				screen.Sync()
			case *tcell.EventKey:
				if ev.Key() == tcell.KeyEscape || ev.Key() == tcell.KeyCtrlC || ev.Rune() == 'q' {
					return nil
				}
				for _, s := range topSorts {
					if ev.Rune() == s.key {
						sortBy = s.name
					}
				}
			}
			draw()
		case <-t.C:
			cur, err := fetch(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				status = err.Error()
				view = nil
			} else {
				v := topRates(prev, cur)
				view, prev = &v, cur
			}
			draw()
		}
	}
}

// put writes s at (x, y), cut at width w.
func put(s tcell.Screen, x, y, w int, str string, style tcell.Style) {
	for _, r := range str {
		if x >= w {
			return
		}
		s.SetContent(x, y, r, nil, style)
		x++
	}
}

// topRow is one line of the view: a VIP (backend empty) or a backend.
type topRow struct {
	service, vip, backend, health string
	pps, bps, newps, dropps       float64
}

type topVIP struct {
	topRow
	backends []topRow
}

// topView is the rates between two samples.
type topView struct {
	interval time.Duration
	vips     []topVIP
	drops    []reasonRate
}

type reasonRate struct {
	reason string
	rate   float64
}

// rate is (cur - prev) / d per second; a counter that went back (a VIP or
// backend re-created, the datapath detached) counts from zero.
func rate(prev, cur uint64, d time.Duration) float64 {
	if cur < prev {
		prev = 0
	}
	return float64(cur-prev) / d.Seconds()
}

// topRates computes the view from two samples.
func topRates(prev, cur TopInfo) topView {
	d := cur.At.Sub(prev.At)
	if d <= 0 {
		d = time.Second
	}
	v := topView{interval: d}
	prevVIP := map[string]VIPInfo{}
	for _, x := range prev.VIPs {
		prevVIP[x.VIP] = x
	}
	type bkey struct{ vip, addr string }
	prevBE := map[bkey]BackendInfo{}
	for _, b := range prev.Backends {
		prevBE[bkey{b.VIP, b.Address}] = b
	}
	byVIP := map[string][]BackendInfo{}
	for _, b := range cur.Backends {
		byVIP[b.VIP] = append(byVIP[b.VIP], b)
	}
	for _, x := range cur.VIPs {
		p := prevVIP[x.VIP]
		tv := topVIP{topRow: topRow{service: x.Service, vip: x.VIP,
			pps: rate(p.Stats.Packets, x.Stats.Packets, d), bps: 8 * rate(p.Stats.Bytes, x.Stats.Bytes, d), newps: rate(p.Stats.NewFlows, x.Stats.NewFlows, d)}}
		sent := 0.0
		for _, b := range byVIP[x.VIP] {
			pb := prevBE[bkey{b.VIP, b.Address}]
			r := topRow{service: b.Service, vip: b.VIP, backend: b.Address, health: topHealth(b),
				pps: rate(pb.Stats.Packets, b.Stats.Packets, d), bps: 8 * rate(pb.Stats.Bytes, b.Stats.Bytes, d), newps: rate(pb.Stats.NewFlows, b.Stats.NewFlows, d)}
			sent += r.pps
			tv.backends = append(tv.backends, r)
		}
		// What reached the VIP but no backend: dropped for want of one.
		tv.dropps = max(0, tv.pps-sent)
		v.vips = append(v.vips, tv)
	}
	prevC := map[string]uint64{}
	for _, c := range prev.Counters {
		prevC[c.Action+"/"+c.Reason] = c.Value
	}
	for _, c := range cur.Counters {
		if c.Action != "drop" {
			continue
		}
		if r := rate(prevC[c.Action+"/"+c.Reason], c.Value, d); r > 0 {
			v.drops = append(v.drops, reasonRate{c.Reason, r})
		}
	}
	slices.SortFunc(v.drops, func(a, b reasonRate) int { return cmp.Or(cmp.Compare(b.rate, a.rate), cmp.Compare(a.reason, b.reason)) })
	return v
}

func topHealth(b BackendInfo) string {
	switch {
	case b.Weight == 0:
		return "drain"
	case b.Health != nil:
		return b.Health.State
	case b.Healthy:
		return "up"
	}
	return "down"
}

// order sorts rows by the key, largest first (vip: by name).
func order(sortBy string, a, b topRow) int {
	var x, y float64
	switch sortBy {
	case "vip":
		return cmp.Or(compareVIP(a.vip, b.vip), cmp.Compare(a.service, b.service), compareAddrPort(a.backend, b.backend), cmp.Compare(a.backend, b.backend))
	case "bits":
		x, y = a.bps, b.bps
	case "new":
		x, y = a.newps, b.newps
	case "drops":
		x, y = a.dropps, b.dropps
	default:
		x, y = a.pps, b.pps
	}
	return cmp.Or(cmp.Compare(y, x), compareVIP(a.vip, b.vip), cmp.Compare(a.backend, b.backend))
}

// lines renders the view as a table, sorted.
func (v topView) lines(sortBy string) []string {
	vips := slices.Clone(v.vips)
	slices.SortFunc(vips, func(a, b topVIP) int { return order(sortBy, a.topRow, b.topRow) })
	t := newTable()
	t.row("SERVICE", "VIP", "BACKEND", "HEALTH", "PKT/S", "BIT/S", "NEW/S", "DROP/S")
	var total topRow
	for _, x := range vips {
		total.pps += x.pps
		total.bps += x.bps
		total.newps += x.newps
		total.dropps += x.dropps
		t.row(x.service, x.vip, "", "", si(x.pps), si(x.bps), si(x.newps), si(x.dropps))
		bs := slices.Clone(x.backends)
		slices.SortFunc(bs, func(a, b topRow) int { return order(sortBy, a, b) })
		for _, b := range bs {
			t.row("", "", b.backend, b.health, si(b.pps), si(b.bps), si(b.newps), "")
		}
	}
	t.row("all", fmt.Sprintf("%d VIPs", len(vips)), "", "", si(total.pps), si(total.bps), si(total.newps), si(total.dropps))
	var b strings.Builder
	_ = t.writeTo(&b)
	out := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	drops := "none"
	if len(v.drops) > 0 {
		var parts []string
		for _, d := range v.drops {
			parts = append(parts, fmt.Sprintf("%s %s", d.reason, si(d.rate)))
		}
		drops = strings.Join(parts, ", ")
	}
	return append(out, "", fmt.Sprintf("Datapath drops/s by reason: %s (over %v)", drops, roundDuration(v.interval)))
}

// si prints a rate with an SI prefix: 0, 12, 1.23k, 45.6M.
func si(f float64) string {
	switch {
	case f == 0:
		return "0"
	case f < 1:
		return fmt.Sprintf("%.2f", f)
	case f < 1000:
		return fmt.Sprintf("%.0f", f)
	}
	for _, p := range []string{"k", "M", "G", "T"} {
		f /= 1000
		if f < 1000 {
			return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.3g", f), ".0"), ".") + p
		}
	}
	return fmt.Sprintf("%.0fP", f/1000)
}
