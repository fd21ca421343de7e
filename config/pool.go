package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
)

// ErrPoolExhausted is the error, per service, of a service whose pool has no
// free address left.
var ErrPoolExhausted = errors.New("no free address")

// PoolsFile is the name of the file, under the state directory, that keeps
// the pool allocations.
const PoolsFile = "pools.json"

// Allocator hands out pool addresses to services that name a pool, and keeps
// them in <state>/pools.json so that a service keeps its address across
// reloads and restarts for as long as it is in the configuration. It is safe
// for concurrent use; the file is its only state.
type Allocator struct {
	mu   sync.Mutex
	path string
}

// NewAllocator returns an allocator keeping its allocations under stateDir,
// normally [Paths.State]. The directory is created (mode 0700) on the first
// write.
func NewAllocator(stateDir string) *Allocator {
	return &Allocator{path: filepath.Join(stateDir, PoolsFile)}
}

// poolState is the content of pools.json.
type poolState struct {
	Version  int                   `json:"version"`
	Services map[string]allocation `json:"services"`
}

// allocation is the address a service holds, by the service's name.
type allocation struct {
	Pool    string     `json:"pool"`
	Address netip.Addr `json:"address"`
}

const poolStateVersion = 1

// Assign gives every service of cfg that names a pool an address from it and
// returns them by service name. A service keeps the address it had if it
// still names the same pool, the address is still in the pool and no
// service claims it as its explicit address; otherwise it gets the lowest
// free address of the pool. An address another service names explicitly is
// never handed out. Services no longer in cfg, or no longer using a pool,
// lose their allocation.
//
// A service that cannot get an address is left out of the addresses and
// given an error in the second map (wrapping [ErrPoolExhausted] when its pool
// is full); the other services are not affected. The third result is an
// error reading or writing the state file, in which case nothing is
// assigned.
func (a *Allocator) Assign(cfg *Config) (map[string]netip.Addr, map[string]error, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, err := a.load()
	if err != nil {
		return nil, nil, err
	}
	addrs, errs := allocate(cfg, prev)
	next := make(map[string]allocation, len(addrs))
	for _, s := range cfg.ServiceSpecs {
		if addr, ok := addrs[s.Name]; ok {
			next[s.Name] = allocation{Pool: s.Pool, Address: addr}
		}
	}
	if !maps.Equal(prev, next) {
		if err := a.save(next); err != nil {
			return nil, nil, err
		}
	}
	return addrs, errs, nil
}

// Preview is [Allocator.Assign] without saving: the addresses the services
// of cfg would get, for a plan.
func (a *Allocator) Preview(cfg *Config) (map[string]netip.Addr, map[string]error, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, err := a.load()
	if err != nil {
		return nil, nil, err
	}
	addrs, errs := allocate(cfg, prev)
	return addrs, errs, nil
}

// load reads the allocations; a missing file holds none.
func (a *Allocator) load() (map[string]allocation, error) {
	data, err := os.ReadFile(a.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]allocation{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading pool allocations: %w", err)
	}
	var st poolState
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("reading pool allocations %s: %w", a.path, err)
	}
	if st.Version != poolStateVersion {
		return nil, fmt.Errorf("reading pool allocations %s: version %d, want %d", a.path, st.Version, poolStateVersion)
	}
	if st.Services == nil {
		st.Services = map[string]allocation{}
	}
	return st.Services, nil
}

// save writes the allocations atomically: a temporary file in the same
// directory, synced, then renamed over the old one.
func (a *Allocator) save(services map[string]allocation) (err error) {
	data, err := json.MarshalIndent(poolState{Version: poolStateVersion, Services: services}, "", "  ")
	if err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(a.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+PoolsFile+".*")
	if err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	if err := os.Rename(f.Name(), a.path); err != nil {
		return fmt.Errorf("writing pool allocations: %w", err)
	}
	// Make the rename durable; a failure here leaves a correct file.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// allocate assigns pool addresses as [Allocator.Assign] describes, given the
// previous allocations prev (nil for none).
func allocate(cfg *Config, prev map[string]allocation) (map[string]netip.Addr, map[string]error) {
	pools := make(map[string]*Pool, len(cfg.Pools))
	for i := range cfg.Pools {
		pools[cfg.Pools[i].Name] = &cfg.Pools[i]
	}
	used := make(map[netip.Addr]bool)
	for _, s := range cfg.ServiceSpecs {
		if s.Address.IsValid() {
			used[s.Address] = true
		}
	}
	addrs := make(map[string]netip.Addr)
	errs := make(map[string]error)

	// First, services keep what they had if they still may.
	for _, s := range cfg.ServiceSpecs {
		if s.Pool == "" || s.Address.IsValid() {
			continue
		}
		old, ok := prev[s.Name]
		p := pools[s.Pool]
		if ok && old.Pool == s.Pool && p != nil && p.contains(old.Address) && !used[old.Address] {
			addrs[s.Name] = old.Address
			used[old.Address] = true
		}
	}
	// Then the others get the lowest free address, in file order. Every
	// address below a pool's cursor is taken, so the cursor only moves on.
	cursors := make(map[string]*poolCursor)
	for _, s := range cfg.ServiceSpecs {
		if s.Pool == "" || s.Address.IsValid() {
			continue
		}
		if _, ok := addrs[s.Name]; ok {
			continue
		}
		p := pools[s.Pool]
		if p == nil {
			errs[s.Name] = fmt.Errorf("pool %q is not defined", s.Pool)
			continue
		}
		c := cursors[s.Pool]
		if c == nil {
			c = &poolCursor{pool: p}
			cursors[s.Pool] = c
		}
		addr, ok := c.take(used)
		if !ok {
			errs[s.Name] = fmt.Errorf("%w in pool %q", ErrPoolExhausted, s.Pool)
			continue
		}
		addrs[s.Name] = addr
		used[addr] = true
	}
	return addrs, errs
}

// contains reports whether the pool hands out addr.
func (p *Pool) contains(addr netip.Addr) bool {
	for _, b := range p.Blocks {
		first, last := b.Allocatable()
		if addr.BitLen() == first.BitLen() && first.Compare(addr) <= 0 && addr.Compare(last) <= 0 {
			return true
		}
	}
	return false
}

// poolCursor walks a pool's addresses in order.
type poolCursor struct {
	pool    *Pool
	block   int
	next    netip.Addr
	started bool
}

// take returns the next address of the pool not in used.
func (c *poolCursor) take(used map[netip.Addr]bool) (netip.Addr, bool) {
	for c.block < len(c.pool.Blocks) {
		first, last := c.pool.Blocks[c.block].Allocatable()
		if !c.started {
			c.next, c.started = first, true
		}
		for c.next.IsValid() && c.next.Compare(last) <= 0 {
			a := c.next
			c.next = a.Next()
			if !used[a] {
				return a, true
			}
		}
		c.block++
		c.started = false
	}
	return netip.Addr{}, false
}
