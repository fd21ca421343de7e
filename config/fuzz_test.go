package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse feeds the decoder arbitrary files. It must never panic; a file
// it refuses gives a non-empty ErrorList, sorted, whose every error has a
// position; a file it accepts resolves into services that hold what the
// schema promises.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(head))
	for _, tc := range errorCases {
		// Large seeds make the fuzzer spend its time minimizing them.
		if len(tc.file) <= 2048 {
			f.Add([]byte(tc.file))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a config and an error")
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("Parse returned %T %v, want a non-empty ErrorList", err, err)
			}
			for i, e := range list {
				if e.Line < 1 || e.Column < 0 || e.Message == "" || e.File != "fuzz.yaml" {
					t.Fatalf("error %d has no position or message: %#v", i, e)
				}
				if i > 0 && posLess(pos{e.Line, e.Column}, pos{list[i-1].Line, list[i-1].Column}) {
					t.Fatalf("errors out of order: %q before %q", list[i-1], e)
				}
			}
			return
		}
		if c == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		alloc, _ := allocate(c, nil)
		for _, s := range c.Services(alloc) {
			if !s.Addr.IsValid() || len(s.Ports) == 0 || s.Name == "" {
				t.Fatalf("service %+v lacks an address, ports or name", s)
			}
			if s.TableSize < MinTableSize || s.TableSize > MaxTableSize || !isPrime(int64(s.TableSize)) {
				t.Fatalf("service %s has table size %d", s.Name, s.TableSize)
			}
			if (s.Mode != ModeDSR || (s.Encap != EncapNone && s.Encap != EncapIPIP)) && (s.Mode != ModeSNAT || s.Encap != "") {
				t.Fatalf("service %s has mode %q and encap %q", s.Name, s.Mode, s.Encap)
			}
			for _, b := range s.Backends {
				if !b.Addr.IsValid() || b.Weight > MaxWeight {
					t.Fatalf("service %s has backend %+v", s.Name, b)
				}
			}
			h := s.HealthCheck
			switch {
			case h.Type != HealthCheckNone && h.Type != HealthCheckTCP && h.Type != HealthCheckHTTP && h.Type != HealthCheckHTTPS && h.Type != HealthCheckUDP,
				h.Timeout < MinHealthTimeout || h.Interval < MinHealthInterval || h.Timeout >= h.Interval,
				h.Rise < 1 || h.Rise > MaxHealthRiseFall || h.Fall < 1 || h.Fall > MaxHealthRiseFall,
				(h.Type == HealthCheckHTTP || h.Type == HealthCheckHTTPS) != (h.Path != "" && len(h.ExpectStatus) > 0):
				t.Fatalf("service %s has health check %+v", s.Name, h)
			}
		}
	})
}
