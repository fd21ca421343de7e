package health

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

// StateFile is the name of the saved states under the state directory
// (paths.state).
const StateFile = "health.json"

// stateVersion is the format of the state file.
const stateVersion = 1

// ErrStateVersion is returned by [Checker.Load] for a file of another format.
var ErrStateVersion = errors.New("unknown health state version")

type stateFile struct {
	Version  int          `json:"version"`
	Backends []savedState `json:"backends"`
}

// savedState is a State as saved. Check is a fingerprint of the address and
// check, so that a state is only trusted in full for the check it came from.
type savedState struct {
	Service      string         `json:"service"`
	Backend      netip.AddrPort `json:"backend"`
	Check        string         `json:"check"`
	Up           bool           `json:"up"`
	Pending      bool           `json:"pending,omitempty"`
	Since        time.Time      `json:"since"`
	LastCheck    time.Time      `json:"lastCheck,omitzero"`
	LastDuration time.Duration  `json:"lastDuration,omitempty"`
	LastResult   Result         `json:"lastResult,omitempty"`
	LastError    string         `json:"lastError,omitempty"`
	Successes    int            `json:"successes,omitempty"`
	Failures     int            `json:"failures,omitempty"`
}

// fingerprint identifies t's address and check.
func fingerprint(t *Target) string {
	b, _ := json.Marshal(struct {
		Addr  netip.AddrPort
		Check config.HealthCheck
	}{t.Addr, t.Check})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// state returns the State s restores for t: all of it if t checks the same
// way, else only Up and Since, as a reload that changed the check would.
func (s savedState) state(t *Target) State {
	st := State{Key: t.Key, Addr: t.Addr, Type: t.Check.Type, Up: s.Up, Since: s.Since, Pending: true}
	if s.Check == fingerprint(t) {
		st.Pending = s.Pending
		st.LastCheck, st.LastDuration, st.LastResult, st.LastError = s.LastCheck, s.LastDuration, s.LastResult, s.LastError
		st.Successes, st.Failures = s.Successes, s.Failures
	}
	return st
}

// Save writes the states of the checked backends to path, atomically (a
// temporary file renamed over it) and readable by its owner only. Save
// after changes (debounced: OnChange may fire for many backends at once)
// and when the daemon stops, so that the next daemon starts where this one
// left off even after a crash.
func (c *Checker) Save(path string) (err error) {
	c.mu.Lock()
	f := stateFile{Version: stateVersion, Backends: make([]savedState, 0, len(c.targets))}
	for _, t := range c.targets {
		st := t.st
		f.Backends = append(f.Backends, savedState{
			Service: st.Key.Service, Backend: st.Key.Backend, Check: fingerprint(&t.Target),
			Up: st.Up, Pending: st.Pending, Since: st.Since,
			LastCheck: st.LastCheck, LastDuration: st.LastDuration, LastResult: st.LastResult, LastError: st.LastError,
			Successes: st.Successes, Failures: st.Failures,
		})
	}
	c.mu.Unlock()
	sortSaved(f.Backends)
	data, err := json.MarshalIndent(f, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding health state: %w", err)
	}
	data = append(data, '\n')

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("saving health state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("saving health state: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file 0600 already; Chmod says so whatever the
	// umask.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("saving health state: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("saving health state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("saving health state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("saving health state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("saving health state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Load reads states saved by [Checker.Save]. They apply to the current
// targets at once, and to the targets of the next [Checker.SetTargets],
// so call it just before or just after the first SetTargets. A restored
// state is not a change: nothing is logged, counted or reported. A state
// saved for another check of the backend restores only whether it was up.
// A missing file is an error that wraps fs.ErrNotExist.
func (c *Checker) Load(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading health state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("decoding health state %s: %w", path, err)
	}
	if f.Version != stateVersion {
		return fmt.Errorf("%w %d in %s, want %d", ErrStateVersion, f.Version, path, stateVersion)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restored = make(map[lb.BackendKey]savedState, len(f.Backends))
	for _, s := range f.Backends {
		key := lb.BackendKey{Service: s.Service, Backend: s.Backend}
		c.restored[key] = s
		if t := c.targets[key]; t != nil {
			t.st = s.state(&t.Target)
			t.fresh = t.st.Pending && !t.st.Up && t.st.LastResult == ResultNone
		}
	}
	return nil
}

func sortSaved(s []savedState) {
	slices.SortFunc(s, func(a, b savedState) int {
		return compareKeys(lb.BackendKey{Service: a.Service, Backend: a.Backend}, lb.BackendKey{Service: b.Service, Backend: b.Backend})
	})
}
