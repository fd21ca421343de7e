package xdp

// The BPF objects are built by bpf2go with the clang the Makefile pins and are
// committed; CI regenerates them and fails on any difference.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v4" -target bpfel -type xdplb_counter -type xdplb_mode -type xdplb_vip_flags -type xdplb_addr_flags -type xdplb_backend_flags -type vip_key -type vip_meta -type vip_slot -type vip_addr -type vip_addr_info -type backend -type backend_slot -type flow4 -type flow6 -type ct_value -type ft_head -type pin4 -type pin6 -type pin4_bucket -type pin6_bucket -type lb_stats -type settings -type dry_outcome -type xdplb_dry_pin -type monitor_event -type xdplb_monitor_type -type nat_key -type nat_value -type nat_config -type nat_src_stats -type xdplb_nat_state -type xdplb_nat_dir lb bpf/lb.bpf.c
// The forwarding program is built for BPF's v4 instruction set (Linux 6.6
// and later) and, as lbv3, for v3 (Linux 5.1 and later): Open loads the one
// the kernel runs (forwardingSpec). The other objects are v3 builds but for
// the benchmark wrappers, which measure the v4 program.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v3" -target bpfel lbv3 bpf/lb.bpf.c
// The dry-run build (dryrun) is the same program with XDPLB_DRY_RUN (bpf/lb.h):
// it counts, pins and sends nothing; xdp/dryrun.go loads it with a datapath's
// maps.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v3 -DXDPLB_DRY_RUN" -target bpfel dryrun bpf/lb.bpf.c
// The benchmark wrappers are an object of their own (bench), which the daemon
// never loads; xdp/bench.go loads it with a datapath's maps. The ablation
// build of them (benchablate) can leave stages out (bench_ablate).
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v4" -target bpfel -type bench_frame -type xdplb_ablation bench bpf/bench.bpf.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v4 -DXDPLB_ABLATE" -target bpfel benchablate bpf/bench.bpf.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -mcpu=v3" -target bpfel -type xdplb_decap_counter -type decap_allow_key decap bpf/decap.bpf.c
