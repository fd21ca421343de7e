# xdplb — see README.md. `make help` lists the targets.

# The BPF compiler is pinned: the committed objects are built with it, and CI
# regenerates them and fails on any difference.
BPF_CLANG  ?= clang-19
BPF_CFLAGS ?= -O2 -g -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu
GO         ?= go
BIN        ?= bin/xdplb
PREFIX     ?= /usr/local
TEST_FLAGS ?= -count=1 -timeout 20m
DEBIAN_PACKAGES = clang-19 llvm-19 libbpf-dev linux-libc-dev iproute2 ethtool prometheus systemd frr keepalived haproxy nftables

export BPF_CLANG BPF_CFLAGS

.PHONY: help deps ensure-deps generate build lint kubetest test bench demo install clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## install the Debian packages the build and tests need (run as root)
	apt-get update
	apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES)

# ensure-deps runs `make deps` when one of the Debian packages is missing, so
# that `make demo` and `make test` are all a fresh host needs (as root; others
# are told what is missing, and the unprivileged tests still run).
ensure-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then echo "installing the missing Debian packages:" $$missing; $(MAKE) --no-print-directory deps; \
		else echo "missing Debian packages:" $$missing "(run 'make deps' as root)" >&2; fi; \
	fi

generate: ## rebuild the BPF objects and their Go bindings (bpf2go)
	$(GO) generate ./...

build: ## build bin/xdplb
	$(GO) build -o $(BIN) ./cmd/xdplb

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

kubetest: ## find or build kube-apiserver and etcd for the Kubernetes tests (cold: ~20 min, cached per version)
	$(GO) run ./internal/kubetest/cmd/kube-env -build

test: ensure-deps kubetest ## run every test; as root the privileged ones too (XDPLB_REQUIRE_PRIVILEGED=1 makes a skip fail)
	$(GO) test $(TEST_FLAGS) ./...

bench: ensure-deps ## datapath, forwarding, end-to-end and Maglev benchmarks (root)
	$(GO) run ./bench datapath
	$(GO) run ./bench forward
	$(GO) run ./bench e2e
	$(GO) test -run '^$$' -bench Maglev -benchmem -count 6 ./lb

demo: ensure-deps build ## run the appliance in a namespace topology with traffic and counters (root)
	$(BIN) demo

install: build ## install the binary, the systemd unit and an example config (root)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/xdplb
	install -D -m 0644 cmd/xdplb/systemd/xdplb.service $(DESTDIR)/etc/systemd/system/xdplb.service
	install -D -m 0644 config/testdata/example.yaml $(DESTDIR)/etc/xdplb/xdplb.yaml.example
	@test -e $(DESTDIR)/etc/xdplb/xdplb.yaml || echo "now write /etc/xdplb/xdplb.yaml (see /etc/xdplb/xdplb.yaml.example, docs/config.md), then: systemctl daemon-reload && systemctl enable --now xdplb"

clean: ## remove build output
	rm -rf bin
