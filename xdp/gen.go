package xdp

// The BPF objects are built by bpf2go with the clang the Makefile pins and are
// committed; CI regenerates them and fails on any difference.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type xdplb_counter -type xdplb_mode -type xdplb_vip_flags -type xdplb_addr_flags -type xdplb_backend_flags -type vip_key -type vip_meta -type vip_slot -type vip_addr -type vip_addr_info -type backend -type backend_slot -type flow4 -type flow6 -type ct_value -type lb_stats -type settings -type dry_outcome -type xdplb_dry_pin -type monitor_event -type xdplb_monitor_type -type nat_key -type nat_value -type nat_config -type nat_src_stats -type xdplb_nat_state -type xdplb_nat_dir lb bpf/lb.bpf.c
// The benchmark wrappers are an object of their own (bench), which the daemon
// never loads; xdp/bench.go loads it with a datapath's maps.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type bench_frame bench bpf/bench.bpf.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type xdplb_decap_counter -type decap_allow_key decap bpf/decap.bpf.c
