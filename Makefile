# keyguard — one target per job. `make help` lists them.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED ?= 0
KERNELS ?= 6.1 6.12 7.3
# arm64 kernels (testvm/kernels.txt series ending in -arm64), booted with qemu-system-aarch64 (TCG) by
# make vmtest-arm64 with the tests ARM64_RUN selects from testvm/arm64-suites.txt (~12 minutes).
ARM64_KERNELS ?= 6.12-arm64
ARM64_RUN ?= ^(TestBPFLSMActive|TestKernelBTF|TestMounts|TestKernelVariants|TestReadPaths|TestMapFiles|TestUringProcOpen|TestDumpBlocked|TestAgentKilledEnforcementHolds|TestKeyFileOnlyForHolders|TestKeyManagerAllowed|TestSignerRewriteRefused|TestAgentBinaryOverwriteWhileDown|TestKeyOpenRace|TestKeyOpenForkRace|TestKeyDirMoved|TestStrictSigner|TestAgentTamperedAfterTrust|TestRawLoopDevice|TestBPFLoadRefused|TestPerfUserStackRefused|TestSysctlWritesRefused|TestKernelMemoryRefused|TestModuleLoadRefused)$$
# Kernels for the systemd VM test (Debian 12 + systemd as PID 1, the .deb packages).
SYSTEMD_KERNELS ?= $(KERNELS)
CACHE ?= $(if $(KEYGUARD_CACHE),$(KEYGUARD_CACHE),$(CURDIR)/.cache)
# Extra vmtest flags, e.g. make vmtest VMTEST_FLAGS="-run TestDeny -suites agent -v"
VMTEST_FLAGS ?=
# VMs at once in make vmtest / vmtest-systemd: all kernels together (on 2 cores the three QEMUs share them;
# with the suites of similar length this ends sooner than two now and the third after).
VM_PARALLEL ?= 3
# The systemd demo's kernel and how long its VM stays up afterwards (empty: until Ctrl-C; 0: at once).
DEMO_KERNEL ?= 6.12
DEMO_HOLD ?=

.DEFAULT_GOAL := help

##@ Main jobs

.PHONY: demo
demo: demo-systemd ## The demo: `make demo-systemd` (the initramfs one is `make demo-initramfs`)

.PHONY: demo-systemd
demo-systemd: deps ## Debian 12 + systemd VM: .deb packages, a signing service, root's attacks blocked, web console on https://127.0.0.1:8443 (DEMO_HOLD=10m or 0; default: until Ctrl-C)
	bash testvm/netmods.sh $(CACHE) $(DEMO_KERNEL)
	$(GO) run ./testvm/cmd/vmtest -systemd -demo -cache $(CACHE) -kernels "$(DEMO_KERNEL)" $(if $(DEMO_HOLD),-demo-hold $(DEMO_HOLD)) $(VMTEST_FLAGS)

.PHONY: demo-initramfs
demo-initramfs: deps ## The small demo: initramfs VM with agent + sample signing service, attacks, events (no console)
	$(GO) run ./testvm/cmd/vmtest -cache $(CACHE) -kernels "$(KERNELS)" -demo $(VMTEST_FLAGS)

.PHONY: check
check: deps check-generate lint test vmtest vmtest-late ## Everything CI runs: generated-code drift, lint, unit tests, VM tests on every kernel (amd64 and arm64), the packages under systemd

##@ Pieces

.PHONY: deps
deps: ## Install the Debian packages and stock kernels the tests need (idempotent)
	bash testvm/setup.sh $(CACHE)

.PHONY: generate
generate: generate-bpf generate-proto ## Regenerate bpf2go and protobuf output (committed)

.PHONY: generate-bpf
generate-bpf: ## Compile bpf/*.c with bpf2go (needs clang, libbpf-dev)
	cd bpf && $(GO) generate ./...

.PHONY: generate-proto
generate-proto: ## Regenerate protobuf/gRPC Go code with buf (run as a Go module)
	@if [ -f proto/buf.gen.yaml ]; then cd proto && $(GO) tool buf format --diff --exit-code && $(GO) tool buf lint && $(GO) tool buf generate; fi

.PHONY: vmlinux
vmlinux: ## Refresh bpf/src/x86/vmlinux.h and bpf/src/arm64/vmlinux.h from the BTF of the pinned stock 6.12 kernels (amd64, arm64)
	bash bpf/update-vmlinux.sh $(CACHE)

.PHONY: check-generate
check-generate: generate ## Fail if `make generate` changes any committed file
	@if [ -n "$$(git status --porcelain -- bpf proto)" ]; then \
		echo "generated code is stale: run 'make generate' and commit:"; git status --porcelain -- bpf proto; git diff --stat -- bpf proto; exit 1; fi

.PHONY: build
build: ## Build all binaries into bin/
	$(GO) build -trimpath -o bin/ ./agent/cmd/... ./collector/cmd/...

.PHONY: packages
packages: ## Build the amd64 and arm64 .deb packages and the multi-arch container image tarballs into out/ (VERSION=... overrides git describe; the arm64 busybox comes from make deps)
	v=$$($(GO) run ./deploy/cmd/kgpackage -print-version $(if $(VERSION),-version $(VERSION))) && \
	$(GO) build -trimpath -ldflags "-s -w -X main.version=$$v" -o out/bin/ ./agent/cmd/keyguard-agent ./agent/cmd/keyguard ./collector/cmd/keyguard-collector && \
	GOARCH=arm64 $(GO) build -trimpath -ldflags "-s -w -X main.version=$$v" -o out/bin-arm64/ ./agent/cmd/keyguard-agent ./agent/cmd/keyguard ./collector/cmd/keyguard-collector
	$(GO) run ./deploy/cmd/kgpackage -bin out/bin -bin-arm64 out/bin-arm64 -busybox-arm64 $(CACHE)/kernels/$(firstword $(ARM64_KERNELS))/busybox -out out $(if $(VERSION),-version $(VERSION))

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: alertmanager
alertmanager: ## Build the pinned real Alertmanager (from its Go module, not keyguard's go.mod) into CACHE for the alert tests
	bash .ci/alertmanager.sh $(CACHE)

.PHONY: test
test: alertmanager ## Unit and integration tests on the host (real gRPC, SQLite, PostgreSQL, Alertmanager)
	KEYGUARD_CACHE=$(CACHE) $(GO) test -count=1 ./...

.PHONY: vmtest
vmtest: deps ## BPF LSM tests in QEMU on each stock kernel in KERNELS (logs in testvm/out/<series>/)
	$(GO) run ./testvm/cmd/vmtest -cache $(CACHE) -kernels "$(KERNELS)" -parallel $(VM_PARALLEL) $(VMTEST_FLAGS)

.PHONY: vmtest-arm64
vmtest-arm64: deps ## The arm64 suite in qemu-system-aarch64 (TCG) on the stock Debian arm64 kernel: read paths, dump block, pins across kill -9, key files at rest, the key-open races, trust anchors, side doors (logs in testvm/out/arm64/)
	$(GO) run ./testvm/cmd/vmtest -cache $(CACHE) -kernels "$(ARM64_KERNELS)" -suites-file testvm/arm64-suites.txt -run '$(ARM64_RUN)' -out testvm/out/arm64 -timeout 45m -suite-timeout 25m $(VMTEST_FLAGS)

.PHONY: vmtest-late
vmtest-late: deps ## vmtest-arm64 and vmtest-systemd side by side (the systemd suite waits most of its 10-minute routine-tools window; each target's output printed whole when it ends)
	$(MAKE) --no-print-directory -j2 --output-sync=target vmtest-arm64 vmtest-systemd

.PHONY: vmtest-systemd
vmtest-systemd: deps ## The .deb packages on Debian 12 with systemd as PID 1 in QEMU: dpkg, systemd-coredump, upgrade under attack, removal (kernels SYSTEMD_KERNELS; logs in testvm/out/systemd/)
	$(GO) run ./testvm/cmd/vmtest -systemd -cache $(CACHE) -kernels "$(SYSTEMD_KERNELS)" -parallel $(VM_PARALLEL) $(VMTEST_FLAGS)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: bench
# Kernels benchmarked on a one-CPU guest: 6.1 hangs bringing up its second CPU under QEMU -icount.
BENCH_ONE_CPU_KERNELS ?= 6.1
BENCH_ICOUNT := shift=0,sleep=off
bench: deps ## Print the cost of keyguard's BPF programs on unprotected processes (ratios of instructions executed under QEMU -icount, so host load does not matter; BENCH_ONE_CPU_KERNELS on one CPU)
	$(GO) run ./testvm/cmd/vmtest -cache $(CACHE) -kernels "$(filter-out $(BENCH_ONE_CPU_KERNELS),$(KERNELS))" -parallel $(VM_PARALLEL) -suites-file testvm/bench-suites.txt -run TestABSwitch -bench . -icount $(BENCH_ICOUNT)
	$(if $(filter $(BENCH_ONE_CPU_KERNELS),$(KERNELS)),$(GO) run ./testvm/cmd/vmtest -cache $(CACHE) -kernels "$(filter $(BENCH_ONE_CPU_KERNELS),$(KERNELS))" -parallel $(VM_PARALLEL) -smp 1 -suites-file testvm/bench-suites.txt -run TestABSwitch -bench . -icount $(BENCH_ICOUNT) -out testvm/out/bench-one-cpu)
	@grep -h '^BENCH' testvm/out/*/suites/agent-internal-loader.log testvm/out/bench-one-cpu/*/suites/agent-internal-loader.log 2>/dev/null
