package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// poolFile returns a config with pool p (blocks as given) and services,
// each "name" (from the pool) or "name=address" (explicit).
func poolFile(t *testing.T, blocks string, services ...string) *Config {
	t.Helper()
	var b strings.Builder
	b.WriteString(head + "pools:\n  - {name: p, blocks: " + blocks + "}\nservices:\n")
	for i, s := range services {
		name, addr, explicit := strings.Cut(s, "=")
		where := "pool: p"
		if explicit {
			where = "address: " + addr
		}
		// Distinct ports keep explicit services from clashing with each
		// other.
		b.WriteString("  - {name: " + name + ", " + where + ", protocol: tcp, ports: [" + itoa(i+1) + "], mode: dsr}\n")
	}
	return mustParse(t, b.String())
}

func addrs(kv ...string) map[string]netip.Addr {
	m := make(map[string]netip.Addr)
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = netip.MustParseAddr(kv[i+1])
	}
	return m
}

func assign(t *testing.T, a *Allocator, c *Config) (map[string]netip.Addr, map[string]error) {
	t.Helper()
	got, errs, err := a.Assign(c)
	if err != nil {
		t.Fatalf("Assign: %v", err)
	}
	return got, errs
}

func TestAllocatorPersists(t *testing.T) {
	dir := t.TempDir()
	const range4 = "[{start: 198.18.10.1, stop: 198.18.10.9}]"

	got, errs := assign(t, NewAllocator(dir), poolFile(t, range4, "a", "b"))
	want := addrs("a", "198.18.10.1", "b", "198.18.10.2")
	if diff := cmp.Diff(want, got, cmpAddrs); diff != "" || len(errs) > 0 {
		t.Fatalf("first Assign (-want +got):\n%s\nerrors: %v", diff, errs)
	}

	// A new allocator on the same directory, as after a restart, with a
	// service added before the others: a and b keep their addresses.
	got, errs = assign(t, NewAllocator(dir), poolFile(t, range4, "c", "b", "a"))
	want = addrs("a", "198.18.10.1", "b", "198.18.10.2", "c", "198.18.10.3")
	if diff := cmp.Diff(want, got, cmpAddrs); diff != "" || len(errs) > 0 {
		t.Fatalf("after restart (-want +got):\n%s\nerrors: %v", diff, errs)
	}

	// The file is private and says what it holds.
	path := filepath.Join(dir, "pools.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	wantFile := `{
  "version": 1,
  "services": {
    "a": {
      "pool": "p",
      "address": "198.18.10.1"
    },
    "b": {
      "pool": "p",
      "address": "198.18.10.2"
    },
    "c": {
      "pool": "p",
      "address": "198.18.10.3"
    }
  }
}
`
	if diff := cmp.Diff(wantFile, string(data)); diff != "" {
		t.Errorf("pools.json (-want +got):\n%s", diff)
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state directory holds %d entries, want only pools.json", len(entries))
	}
}

func TestAllocatorReleases(t *testing.T) {
	dir := t.TempDir()
	a := NewAllocator(dir)
	const range4 = "[{start: 198.18.10.1, stop: 198.18.10.9}]"
	assign(t, a, poolFile(t, range4, "a", "b", "c"))

	// b is removed: its address goes back to the pool, and the next
	// service that needs one gets it.
	got, _ := assign(t, a, poolFile(t, range4, "a", "c"))
	if diff := cmp.Diff(addrs("a", "198.18.10.1", "c", "198.18.10.3"), got, cmpAddrs); diff != "" {
		t.Errorf("after removing b (-want +got):\n%s", diff)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "pools.json"))
	if strings.Contains(string(data), `"b"`) {
		t.Errorf("pools.json still holds b:\n%s", data)
	}
	got, _ = assign(t, a, poolFile(t, range4, "a", "c", "d"))
	if diff := cmp.Diff(addrs("a", "198.18.10.1", "c", "198.18.10.3", "d", "198.18.10.2"), got, cmpAddrs); diff != "" {
		t.Errorf("after adding d (-want +got):\n%s", diff)
	}

	// A service moved to an explicit address lets its pool address go.
	got, _ = assign(t, a, poolFile(t, range4, "a=198.18.20.1", "c", "d", "e"))
	if diff := cmp.Diff(addrs("c", "198.18.10.3", "d", "198.18.10.2", "e", "198.18.10.1"), got, cmpAddrs); diff != "" {
		t.Errorf("after a went explicit (-want +got):\n%s", diff)
	}
}

func TestAllocatorExhausted(t *testing.T) {
	a := NewAllocator(t.TempDir())
	// A /30 CIDR keeps its network and broadcast addresses back: two usable.
	got, errs := assign(t, a, poolFile(t, "[{cidr: 198.18.10.0/30}]", "a", "b", "c", "d"))
	if diff := cmp.Diff(addrs("a", "198.18.10.1", "b", "198.18.10.2"), got, cmpAddrs); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	wantErrs := map[string]string{
		"c": `no free address in pool "p"`,
		"d": `no free address in pool "p"`,
	}
	gotErrs := make(map[string]string)
	for name, err := range errs {
		gotErrs[name] = err.Error()
		if !errors.Is(err, ErrPoolExhausted) {
			t.Errorf("error of %s = %v, want ErrPoolExhausted", name, err)
		}
	}
	if diff := cmp.Diff(wantErrs, gotErrs); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}

	// Removing a frees an address for c; d still waits.
	got, errs = assign(t, a, poolFile(t, "[{cidr: 198.18.10.0/30}]", "b", "c", "d"))
	if diff := cmp.Diff(addrs("b", "198.18.10.2", "c", "198.18.10.1"), got, cmpAddrs); diff != "" || len(errs) != 1 || errs["d"] == nil {
		t.Errorf("after removing a (-want +got):\n%s\nerrors: %v", diff, errs)
	}
}

func TestAllocatorSkipsExplicitAddresses(t *testing.T) {
	dir := t.TempDir()
	a := NewAllocator(dir)
	const range4 = "[{start: 198.18.10.1, stop: 198.18.10.3}]"

	// x uses the pool's first address explicitly: it is never handed out.
	got, errs := assign(t, a, poolFile(t, range4, "x=198.18.10.1", "a", "b", "c"))
	if diff := cmp.Diff(addrs("a", "198.18.10.2", "b", "198.18.10.3"), got, cmpAddrs); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if !errors.Is(errs["c"], ErrPoolExhausted) || len(errs) != 1 {
		t.Errorf("errors = %v, want c exhausted", errs)
	}

	// y now claims a's address explicitly, in a file written later: a moves
	// to the free address and b keeps its own.
	got, _ = assign(t, NewAllocator(dir), poolFile(t, "[{start: 198.18.10.1, stop: 198.18.10.4}]", "a", "b", "y=198.18.10.2"))
	if diff := cmp.Diff(addrs("a", "198.18.10.1", "b", "198.18.10.3"), got, cmpAddrs); diff != "" {
		t.Errorf("after y claimed a's address (-want +got):\n%s", diff)
	}
}

func TestAllocatorPoolChanges(t *testing.T) {
	a := NewAllocator(t.TempDir())
	assign(t, a, poolFile(t, "[{start: 198.18.10.1, stop: 198.18.10.9}]", "a", "b"))
	// The pool shrinks past b's address: b gets a new one, a keeps its own.
	got, _ := assign(t, a, poolFile(t, "[{start: 198.18.10.1, stop: 198.18.10.1}, {cidr: \"2001:db8::/126\"}]", "a", "b"))
	if diff := cmp.Diff(addrs("a", "198.18.10.1", "b", "2001:db8::1"), got, cmpAddrs); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestAllocatorBadStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pools.json")
	for _, tc := range []struct {
		name, content, want string
	}{
		{"not JSON", "{", "reading pool allocations " + path + ": unexpected EOF"},
		{"other version", `{"version": 2, "services": {}}`, "reading pool allocations " + path + ": version 2, want 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := NewAllocator(dir).Assign(poolFile(t, "[{cidr: 198.18.10.0/30}]", "a"))
			if err == nil || err.Error() != tc.want {
				t.Errorf("Assign error = %v, want %q", err, tc.want)
			}
			// The file is left for the operator to look at.
			if data, _ := os.ReadFile(path); string(data) != tc.content {
				t.Errorf("pools.json changed to %q", data)
			}
		})
	}
}

func TestCheckReportsExhaustedPools(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "xdplb.yaml")
	state := filepath.Join(dir, "state")
	file := head + "paths: {state: " + state + "}\npools:\n  - {name: p, blocks: [{start: 198.18.10.1, stop: 198.18.10.1}]}\nservices:\n" +
		"  - {name: a, pool: p, protocol: tcp, ports: [80], mode: dsr}\n" +
		"  - {name: b, pool: p, protocol: tcp, ports: [80], mode: dsr}\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Check(path)
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("Check = %v, want an ErrorList", err)
	}
	want := ErrorList{{File: path, Path: "services[1].pool", Line: 10, Column: 21, Message: `no free address in pool "p"`}}
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("Check (-want +got):\n%s", diff)
	}
	// Check touches nothing: the state directory is not even created.
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Check, stat %s: %v, want it not to exist", state, err)
	}
}
