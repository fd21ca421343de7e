package dpfuzz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// CampaignOptions are the length and seed of a campaign.
type CampaignOptions struct {
	// Packets to run in all (at least one configuration runs).
	Packets int
	// PerConfig frames run against each configuration before the next
	// (default 20,000).
	PerConfig int
	// Seed of the first configuration; configuration i uses Seed+i.
	Seed uint64
	// Report receives every divergence (the first MaxReports in full).
	Report     io.Writer
	MaxReports int
	// Strict: the model follows the rules where the program is known to
	// break them, so those frames count as divergences too.
	Strict bool
	// Progress, if set, is called after every configuration.
	Progress func(CampaignStats)
}

// CampaignStats are a campaign's figures.
type CampaignStats struct {
	Packets, Configs, Divergences int
	Elapsed                       time.Duration
	// KnownBugs counts the frames that met each known program bug
	// (xdp.FrameModel.Bugs).
	KnownBugs map[string]int
	// Counters are the program's global counters summed over the
	// configurations ("action/reason"): what the frames exercised.
	Counters map[string]uint64
}

// PacketsPerSecond is the campaign's throughput.
func (s CampaignStats) PacketsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Packets) / s.Elapsed.Seconds()
}

// Campaign runs configurations one after the other, each a fresh datapath,
// with PerConfig frames each, until Packets have run; it counts the frames
// on which the program and the model disagree, and every configuration
// whose counters differ from the model's tally at its end.
func Campaign(ctx context.Context, env Env, o CampaignOptions) (CampaignStats, error) {
	if o.PerConfig <= 0 {
		o.PerConfig = 20000
	}
	if o.MaxReports <= 0 {
		o.MaxReports = 10
	}
	st := CampaignStats{KnownBugs: map[string]int{}, Counters: map[string]uint64{}}
	start := time.Now()
	report := func(s string) {
		st.Divergences++
		if o.Report != nil && st.Divergences <= o.MaxReports {
			fmt.Fprintf(o.Report, "divergence %d (configuration seed %d):\n%s\n", st.Divergences, o.Seed+uint64(st.Configs), s)
		}
	}
	err := env.NS.Do(func() error {
		for st.Packets < o.Packets || st.Configs == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			s := FromSeed(o.Seed + uint64(st.Configs))
			cfg := NewConfig(s)
			w, err := Open(cfg, env, !o.Strict)
			if err != nil {
				return err
			}
			frames := NewFrames(s, cfg)
			n := min(o.PerConfig, max(o.Packets-st.Packets, 1))
			for range n {
				ingress := env.Ingress
				if s.Chance(20) {
					ingress = env.TxPort
				}
				err := w.Check(frames.Frame(), ingress)
				var d *Divergence
				switch {
				case errors.As(err, &d):
					report(d.Error())
				case err != nil:
					w.Close()
					return err
				}
				st.Packets++
			}
			for _, diff := range w.CheckCounters() {
				report(diff + "\n" + cfg.String())
			}
			if all, err := w.counters(); err == nil {
				for n, v := range all {
					st.Counters[n] += v
				}
			}
			w.Close()
			for b, n := range w.Bugs {
				st.KnownBugs[b] += n
			}
			st.Configs++
			st.Elapsed = time.Since(start)
			if o.Progress != nil {
				o.Progress(st)
			}
		}
		return nil
	})
	st.Elapsed = time.Since(start)
	return st, err
}
