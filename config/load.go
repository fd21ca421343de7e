package config

import (
	"crypto/sha256"
	"fmt"
	"os"
)

// Load reads and parses the configuration file at path. A file that cannot
// be read is a plain error; a file with problems is an [ErrorList].
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates a configuration file; name is what errors and
// [Config.File] call it. It returns every problem it finds as an
// [ErrorList] sorted by position, and no Config if there is any.
func Parse(name string, data []byte) (*Config, error) {
	d := newDecoder(name)
	c := &Config{file: name, sum: sha256.Sum256(data), pos: d.pos}
	if root := d.parse(data); root != nil {
		d.config(c, root)
		if !d.spent {
			c.validate(d)
		}
	}
	if len(d.errs) > 0 {
		d.errs.sort()
		return nil, d.errs
	}
	return c, nil
}

// Check parses and validates the file at path without touching the host, for
// `xdplb check FILE`. Beyond [Load], it hands out pool addresses in memory, as
// a daemon starting without state would, and reports services whose pool has
// no address left; nothing is written.
func Check(path string) error {
	c, err := Load(path)
	if err != nil {
		return err
	}
	return checkPools(c)
}

// CheckData is [Check] of a file's content: name is what errors call it. It
// returns the Config when there is no error.
func CheckData(name string, data []byte) (*Config, error) {
	c, err := Parse(name, data)
	if err != nil {
		return nil, err
	}
	if err := checkPools(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkPools reports the services whose pool has no address left for them.
func checkPools(c *Config) error {
	_, errs := allocate(c, nil)
	var list ErrorList
	for i, s := range c.ServiceSpecs {
		if err, ok := errs[s.Name]; ok {
			p := index("services", i) + ".pool"
			pp := c.position(p)
			list = append(list, &Error{File: c.file, Path: p, Line: pp.line, Column: pp.column, Message: err.Error()})
		}
	}
	if len(list) > 0 {
		list.sort()
		return list
	}
	return nil
}
