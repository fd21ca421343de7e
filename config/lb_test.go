package config_test

import (
	"fmt"
	"testing"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/lb"
)

// TestLimitsMatchLB checks that the limits config enforces are the ones the
// Maglev builder accepts, so that a file that passes `xdplb check` builds.
// config cannot import lb (lb consumes config), so it repeats them.
func TestLimitsMatchLB(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"MinTableSize", config.MinTableSize, lb.MinTableSize},
		{"MaxTableSize", config.MaxTableSize, lb.MaxTableSize},
		{"MaxWeight", config.MaxWeight, lb.MaxWeight},
		{"DefaultTableSize", config.DefaultTableSize, lb.DefaultTableSize},
	} {
		if c.got != c.want {
			t.Errorf("config.%s = %d, lb.%s = %d", c.name, c.got, c.name, c.want)
		}
	}
	// Every size lb accepts near the bounds and among the common sizes,
	// config accepts, and the other way round.
	var sizes []int
	for m := config.MinTableSize - 20; m <= config.MinTableSize+20; m++ {
		sizes = append(sizes, m)
	}
	for m := config.MaxTableSize - 20; m <= config.MaxTableSize+40; m++ {
		sizes = append(sizes, m)
	}
	sizes = append(sizes, lb.CommonTableSizes...)
	sizes = append(sizes, 1000, 16383, 65535)
	for _, m := range sizes {
		file := fmt.Sprintf("interfaces: [{name: eth0}]\nmaglev: {seed: 7sVbCXnvcRBFqlPEkQJsHQ==, tableSize: %d}\n", m)
		_, err := config.Parse("x.yaml", []byte(file))
		if lbOK, configOK := lb.ValidTableSize(m) == nil, err == nil; lbOK != configOK {
			t.Errorf("table size %d: lb accepts it: %v, config accepts it: %v (%v)", m, lbOK, configOK, err)
		}
	}
}
