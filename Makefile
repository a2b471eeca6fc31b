# isola — run every pod in its own lightweight VM.
#
#   make demo      set up this machine, build everything, boot a VM and talk to its agent
#   make test      set up, build, and run every check and test (what CI runs)
#   make bench     side-by-side benchmarks (ratios)
#   make install   install binaries, guest image and default config under $(PREFIX)

PREFIX      ?= /usr/local
CARGO       ?= cargo
GUEST_TARGET := x86_64-unknown-linux-gnu
GUEST_OUT   := build/guest
STATIC_DIR  := target/$(GUEST_TARGET)/release
BENCH_RUNS  ?= 5
export ISOLA_PREFIX := $(PREFIX)

.PHONY: all setup build agent guest demo test lint unit bench install uninstall clean

all: build guest

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release -p isola

# The guest binaries are static: an explicit --target keeps +crt-static off proc-macros.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release \
	  --target $(GUEST_TARGET) -p isola-agent -p isola-floor-init

guest: agent
	guest/build.sh --agent $(STATIC_DIR)/isola-agent \
	  --floor-init $(STATIC_DIR)/isola-floor-init --out $(GUEST_OUT)

# The main job: a VM booted and its agent answering (isola check with a boot).
demo: setup build guest
	scripts/dev-config.sh $(CURDIR) > build/isola-dev.toml
	ISOLA_CONFIG=$(CURDIR)/build/isola-dev.toml target/release/isola check

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: setup guest lint
	$(CARGO) nextest run --workspace --no-fail-fast

bench: setup build guest
	scripts/dev-config.sh $(CURDIR) > build/isola-dev.toml
	ISOLA_CONFIG=$(CURDIR)/build/isola-dev.toml target/release/isola bench boot --runs $(BENCH_RUNS) \
	  --floor-initrd $(GUEST_OUT)/floor-initrd.img

install: build guest
	install -D -m 0755 target/release/isola $(DESTDIR)$(PREFIX)/bin/isola
	install -D -m 0644 $(GUEST_OUT)/vmlinuz $(DESTDIR)$(PREFIX)/share/isola/vmlinuz
	install -D -m 0644 $(GUEST_OUT)/initrd.img $(DESTDIR)$(PREFIX)/share/isola/initrd.img
	sed 's|"/usr/local/share/isola/|"$(PREFIX)/share/isola/|' config/configuration.toml > build/configuration.toml
	install -D -m 0644 build/configuration.toml $(DESTDIR)$(PREFIX)/share/isola/configuration.toml

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/isola
	rm -rf $(DESTDIR)$(PREFIX)/share/isola

clean:
	$(CARGO) clean
	rm -rf build
