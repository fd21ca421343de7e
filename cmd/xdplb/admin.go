package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"

	"github.com/xdplb/xdplb/config"
	"github.com/xdplb/xdplb/xdp"
)

// runCheck validates a configuration file: every error, with its position.
func runCheck(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb check FILE\n\nValidates FILE as `xdplb run` would, without touching the host: prints every\nerror with its line and column, exit status 1 if there is any.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	path := defaultConfig
	switch fs.NArg() {
	case 0:
	case 1:
		path = fs.Arg(0)
	default:
		return usageError{"check: one file at a time"}
	}
	if err := config.Check(path); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: ok\n", path)
	return nil
}

// runDetach removes what xdplb put on the host: the XDP programs (pinned
// links) on every interface, the decap programs, and the pinned maps.
func runDetach(_ context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("detach", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file (for paths.bpf)")
	pin := fs.String("pin-path", "", "bpffs directory of the pinned objects (default: paths.bpf of the configuration, else "+xdp.DefaultPinPath+")")
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: xdplb detach [--config FILE | --pin-path DIR]\n\nRemoves the datapath from every interface and deletes its pinned maps: established\nflows and counters are lost. Stop the daemon first (systemctl stop xdplb).\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	dir := *pin
	if dir == "" {
		dir = xdp.DefaultPinPath
		if cfg, err := config.Load(*cfgPath); err == nil {
			dir = cfg.Paths.BPF
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("detach: %w (use --pin-path)", err)
		}
	}
	n, err := detachAll(dir, out)
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintf(out, "nothing pinned under %s\n", dir)
	}
	return nil
}

// detachAll unpins every link under dir (detaching its program) and removes
// every other pin, then the directories.
func detachAll(dir string, out io.Writer) (int, error) {
	n := 0
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		if de.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		n++
		name := de.Name()
		if strings.HasPrefix(name, "link") {
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return fmt.Errorf("loading %s: %w", path, err)
			}
			if err := l.Unpin(); err != nil {
				l.Close()
				return err
			}
			if err := l.Close(); err != nil {
				return err
			}
			fmt.Fprintf(out, "detached %s\n", path)
			return nil
		}
		if err := os.Remove(path); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed %s\n", path)
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
	return n, err
}
