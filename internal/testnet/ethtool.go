package testnet

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtoolValue is struct ethtool_value from <linux/ethtool.h>.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with ifr_data set.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// offload is one legacy ethtool feature toggle.
type offload struct {
	name     string
	get, set uint32
}

// senderOffloads are the offloads turned off on every veth of a topology:
// transmit checksum offload, because a frame that XDP forwards keeps the
// partial checksum the sender left and is dropped by the receiver, and the
// segmentation and receive-coalescing offloads, so that XDP always sees
// frames of at most one MTU.
var senderOffloads = []offload{
	{"tx-checksumming", unix.ETHTOOL_GTXCSUM, unix.ETHTOOL_STXCSUM},
	{"tcp-segmentation-offload", unix.ETHTOOL_GTSO, unix.ETHTOOL_STSO},
	{"generic-segmentation-offload", unix.ETHTOOL_GGSO, unix.ETHTOOL_SGSO},
	{"generic-receive-offload", unix.ETHTOOL_GGRO, unix.ETHTOOL_SGRO},
}

func ethtoolIoctl(fd int, ifname string, v *ethtoolValue) error {
	var ifr ifreqData
	if len(ifname) >= len(ifr.name) {
		return fmt.Errorf("interface name %q too long", ifname)
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	if errno != 0 {
		return errno
	}
	return nil
}

// withEthtoolSocket runs fn with a socket for ethtool ioctls. The socket's
// namespace decides which interfaces the ioctls see, so call it inside NS.Do.
func withEthtoolSocket(fn func(fd int) error) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	return fn(fd)
}

// disableOffloads turns the senderOffloads off on ifname, in the namespace
// of the calling thread, and checks that they are off.
func disableOffloads(ifname string) error {
	return withEthtoolSocket(func(fd int) error {
		// A feature the device cannot change fails with EOPNOTSUPP; that
		// is fine when it is off already (an XDP program on a veth's peer
		// takes the segmentation offloads away), so check afterwards.
		var setErrs []error
		for _, o := range senderOffloads {
			if err := ethtoolIoctl(fd, ifname, &ethtoolValue{cmd: o.set, data: 0}); err != nil {
				setErrs = append(setErrs, fmt.Errorf("turning %s off on %s: %w", o.name, ifname, err))
			}
		}
		on, err := readOffloads(fd, ifname)
		if err != nil {
			return err
		}
		if len(on) > 0 {
			return fmt.Errorf("%v still on for %s: %w", on, ifname, errors.Join(setErrs...))
		}
		return nil
	})
}

// offloadsOn returns the names of the senderOffloads that are on for ifname,
// in the namespace of the calling thread.
func offloadsOn(ifname string) ([]string, error) {
	var on []string
	err := withEthtoolSocket(func(fd int) error {
		var err error
		on, err = readOffloads(fd, ifname)
		return err
	})
	return on, err
}

func readOffloads(fd int, ifname string) ([]string, error) {
	var on []string
	for _, o := range senderOffloads {
		v := ethtoolValue{cmd: o.get}
		if err := ethtoolIoctl(fd, ifname, &v); err != nil {
			return nil, fmt.Errorf("reading %s of %s: %w", o.name, ifname, err)
		}
		if v.data != 0 {
			on = append(on, o.name)
		}
	}
	return on, nil
}

// DisableOffloads turns transmit checksum offload, TSO, GSO and GRO off on
// ifname, as NewTopology does on every veth: call it inside NS.Do, in the
// interface's namespace. Topologies built elsewhere (the benchmarks') need it
// for the same reason: a frame that XDP forwards keeps the partial checksum
// its sender left.
func DisableOffloads(ifname string) error { return disableOffloads(ifname) }
