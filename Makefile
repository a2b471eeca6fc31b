# isola — run every pod in its own lightweight VM.
#
#   make demo      set up this machine, build everything, run a container in its own VM
#                  through containerd (ctr run --runtime io.containerd.isola.v2)
#   make test      set up, build, and run every check and test (what CI runs)
#   make bench     side-by-side benchmarks (ratios)
#   make install   install binaries (isola, the containerd shim), guest image and default
#                  config under $(PREFIX)
#   make images    the local test image (build/images/busybox.tar; no registry needed)
#   make deploy-payload  what `isola deploy install --payload` installs (build/deploy-payload)
#   make deploy-image    the isola-deploy image (build/images/isola-deploy.tar; no registry)

PREFIX      ?= /usr/local
CARGO       ?= cargo
GUEST_TARGET := x86_64-unknown-linux-gnu
GUEST_OUT   := build/guest
IMAGES_OUT  := build/images
SHIM        := containerd-shim-isola-v2
STATIC_DIR  := target/$(GUEST_TARGET)/guest
BENCH_RUNS  ?= 5
export ISOLA_PREFIX := $(PREFIX)
# A CI run builds once: incremental state would only take disk.
ifneq ($(CI),)
export CARGO_INCREMENTAL := 0
endif

.PHONY: all setup build agent guest images k8s k8s-demo k8s-demo-stop demo test lint unit bench install uninstall deploy-payload deploy-image clean

all: build guest images

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release -p isola -p $(SHIM)

# The guest binaries are static: an explicit --target keeps +crt-static off proc-macros.
# libseccomp is linked statically too (the guest has no dynamic loader), so containers get
# their seccomp profiles enforced.
agent:
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile guest \
	  --target $(GUEST_TARGET) -p isola-agent --features isola-agent/seccomp -p isola-floor-init

guest: agent
	guest/build.sh --agent $(STATIC_DIR)/isola-agent \
	  --floor-init $(STATIC_DIR)/isola-floor-init --out $(GUEST_OUT)

# The test image, built locally from Debian's busybox-static (cached: rebuilt only when the
# script or /bin/busybox change).
images:
	scripts/build-test-image.sh $(IMAGES_OUT)/busybox.tar
	IMAGE_KIND=pause scripts/build-test-image.sh $(IMAGES_OUT)/pause.tar
	IMAGE_KIND=noenv scripts/build-test-image.sh $(IMAGES_OUT)/busybox-noenv.tar
	IMAGE_KIND=tools scripts/build-test-image.sh $(IMAGES_OUT)/tools.tar

# Kubernetes 1.32 node binaries and CRI-O from ../shared/k8s (not on any reachable registry),
# unpacked into build/k8s/bin for the CRI-O and cluster tests; says what is missing without it.
k8s:
	scripts/unpack-k8s.sh

# A single-node Kubernetes with isola for a person to try (the tests' cluster, one isola pod and
# one runc pod): prints an `export KUBECONFIG=` line and returns with the cluster running.
# RUNTIME=crio for CRI-O on the node. `make k8s-demo-stop` takes it all down.
k8s-demo: setup guest images k8s
	$(CARGO) build -p containerd-shim-isola-v2 -p isola -p isola-tests --bin k8s-demo
	scripts/k8s-demo.sh start

k8s-demo-stop:
	scripts/k8s-demo.sh stop

# The main job: a private containerd (scripts/containerd-dev.sh) runs a container in its own VM
# with ctr run --runtime io.containerd.isola.v2, then stops again.
demo: setup build guest images
	scripts/dev-config.sh $(CURDIR) > build/isola-dev.toml
	ISOLA_CONFIG=$(CURDIR)/build/isola-dev.toml ISOLA_SHIM_DIR=$(CURDIR)/target/release scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# nextest builds every workspace binary, the shim the ctr tests run included
# (target/debug/containerd-shim-isola-v2). The isola-deploy image (release binaries) is what
# the cluster tests install from the cluster (tests/tests/k8s_deploy.rs).
# Cloud Hypervisor guests run only where hardware KVM is (it has no software emulation): there
# the backend's VM tests (vm_clh_*, #[ignore]d with that reason) and the ctr suite again with
# Cloud Hypervisor as the backend; elsewhere a line says why not. Its API contract tests and the
# ctr test of its refusal run everywhere.
test: setup guest images k8s deploy-image lint
	$(CARGO) nextest run --workspace --no-fail-fast
	@if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then \
	  $(CARGO) nextest run -p isola-hypervisor --run-ignored only -E 'test(/^vm_clh_/)' && \
	  ISOLA_TEST_HYPERVISOR=cloud-hypervisor $(CARGO) nextest run -p isola-tests --test ctr_run --test ctr_task_ops --test ctr_security; \
	else \
	  echo "SKIPPED vm_clh_* and the ctr suite on Cloud Hypervisor: this host has no hardware KVM (no vmx/svm in /proc/cpuinfo, or /dev/kvm not writable); Cloud Hypervisor has no software emulation"; \
	fi

# Boot (spawn -> agent ready vs the bare-kernel floor) for the default (tailored) kernel and the
# Debian kernel side by side, then ctr run --rm start-to-exit for isola vs runc vs that floor,
# then the host memory of one idle pod, then pod start to container running through CRI for isola
# vs runc, then pod create -> Running through a real kubelet for isola vs runc and the memory the
# kubelet sees for an idle isola pod: all in one run.
bench: setup build guest images k8s
	scripts/dev-config.sh $(CURDIR) > build/isola-dev.toml
	ISOLA_CONFIG=$(CURDIR)/build/isola-dev.toml scripts/bench-ctr.sh $(BENCH_RUNS)
	$(CARGO) build --release -p isola-tests --bin bench-pod --bin bench-k8s --bin bench-density
	ISOLA_SHIM_DIR=$(CURDIR)/target/release target/release/bench-pod $(BENCH_RUNS)
	ISOLA_SHIM_DIR=$(CURDIR)/target/release target/release/bench-density
	ISOLA_SHIM_DIR=$(CURDIR)/target/release target/release/bench-density 20 template
	ISOLA_SHIM_DIR=$(CURDIR)/target/release target/release/bench-k8s $(BENCH_RUNS)

install: build guest
	install -D -m 0755 target/release/isola $(DESTDIR)$(PREFIX)/bin/isola
	install -D -m 0755 target/release/$(SHIM) $(DESTDIR)$(PREFIX)/bin/$(SHIM)
	install -D -m 0644 $(GUEST_OUT)/vmlinux $(DESTDIR)$(PREFIX)/share/isola/vmlinux
	install -D -m 0644 $(GUEST_OUT)/initrd.img $(DESTDIR)$(PREFIX)/share/isola/initrd.img
	install -D -m 0644 $(GUEST_OUT)/debian/vmlinux $(DESTDIR)$(PREFIX)/share/isola/debian/vmlinux
	install -D -m 0644 $(GUEST_OUT)/debian/initrd.img $(DESTDIR)$(PREFIX)/share/isola/debian/initrd.img
	sed 's|"/usr/local/share/isola/|"$(PREFIX)/share/isola/|' config/configuration.toml > build/configuration.toml
	install -D -m 0644 build/configuration.toml $(DESTDIR)$(PREFIX)/share/isola/configuration.toml
	@echo "installed; to add the runtime to containerd's CRI: $(PREFIX)/bin/isola install containerd"

# The payload of the isola-deploy image (deploy/isola-deploy.yaml): release binaries, the guest
# image and the default configuration, laid out as `make install` lays out a PREFIX.
deploy-payload: build guest
	scripts/build-deploy-payload.sh build/deploy-payload

# The image deploy/isola-deploy.yaml runs: that payload at /payload, the entrypoint
# deploy/isola-deploy-entrypoint.sh, busybox, nsenter and the libraries they and isola need, as
# an OCI archive `ctr images import` takes (cached: rebuilt only when an input changes); then
# checked by running isola, nsenter, sh and the entrypoint chrooted into its unpacked rootfs.
deploy-image: deploy-payload
	scripts/build-deploy-image.sh build/deploy-payload $(IMAGES_OUT)/isola-deploy.tar
	scripts/check-deploy-image.sh $(IMAGES_OUT)/isola-deploy.tar

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/isola $(DESTDIR)$(PREFIX)/bin/$(SHIM)
	rm -rf $(DESTDIR)$(PREFIX)/share/isola

clean:
	$(CARGO) clean
	rm -rf build
