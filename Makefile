# butler: the entry points. `make run` starts the daemon; `make test` is what CI runs.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: help build run test fuzz test-node node-deps api-docs test-browser it-fixtures lint fmt fmt-check bench bench-peer startup-order release clean \
	soak windows windows-toolchain lint-windows test-windows wine-prefix windows-386

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## debug build of the whole workspace
	$(CARGO) build --workspace --locked

run: ## build and start the daemon on the embedded default database
	$(CARGO) build --locked --bin butler
	./target/debug/butler --json daemon --transport tcp --keep-alive

test: it-fixtures node-deps ## every test, then fmt and clippy with warnings denied, then the Windows lane
	BUTLER_IT_FIXTURES=$(abspath $(IT_FIXTURES)) $(CARGO) test --workspace --locked
	$(MAKE) test-node
	$(MAKE) test-browser
	$(MAKE) lint
	$(MAKE) test-windows

api-docs: ## regenerate docs/api/ (OpenRPC, reference, TypeScript typings) from the daemon's code
	$(CARGO) run --locked --quiet --bin butler -- api-docs --out docs/api

node-deps: ## the official @itchio/butlerd client, which integration tests and the bench drive
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

test-node: node-deps ## the @itchio/butlerd npm client's own test suite, run against our daemon
	$(CARGO) build --locked --bin butler
	@tmp=$$(mktemp -d) && cd $$tmp && \
	  if PATH="$(abspath $(or $(CARGO_TARGET_DIR),target))/debug:$$PATH" node $(CURDIR)/tests/node/node_modules/@itchio/butlerd/lib/tests/index.js > node.log 2>&1; \
	  then echo "node client suite (@itchio/butlerd 15.0.0): passed"; rm -rf $$tmp; \
	  else cat node.log; echo "node client suite: FAILED"; exit 1; fi

# The log viewer (`butler logs web`) in Debian's headless chromium through puppeteer-core, which
# downloads no browser (.ci/run installs chromium). It writes a screenshot of the page following
# a live stream.
TARGET := $(or $(CARGO_TARGET_DIR),target)
test-browser: ## the log viewer driven in a real headless browser; screenshot in target/browser/
	$(CARGO) build --locked --bin butler
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(TARGET)/browser
	cd tests/browser && BUTLER_BIN="$(abspath $(TARGET))/debug/butler" \
	  SCREENSHOT="$(abspath $(TARGET))/browser/viewer.png" CHROMIUM="$$(command -v chromium || echo /usr/bin/chromium)" \
	  node --test viewer.test.mjs

# Two real butler builds for the updater's tests: the same source built as a newer version
# (BUTLER_BUILD_VERSION; only the butler crate recompiles) and as itself, stripped so the tests
# move ~20 MB instead of ~100 MB. The normal build goes last so `cargo test` finds it current.
IT_FIXTURES := $(or $(CARGO_TARGET_DIR),target)/it-fixtures
IT_NEW_VERSION ?= 0.2.0
it-fixtures: ## build the old/new butler pair the updater tests upgrade between
	mkdir -p $(IT_FIXTURES)
	rm -rf $(IT_FIXTURES)/broth-*
	BUTLER_BUILD_VERSION=$(IT_NEW_VERSION) $(CARGO) build --locked --bin butler
	strip -o $(IT_FIXTURES)/butler-new $(or $(CARGO_TARGET_DIR),target)/debug/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/debug/butler $(IT_FIXTURES)/butler-new
	$(CARGO) build --locked --bin butler
	strip -o $(IT_FIXTURES)/butler-old $(or $(CARGO_TARGET_DIR),target)/debug/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/debug/butler $(IT_FIXTURES)/butler-old

# cargo-fuzz targets (tests/fuzz, a crate of its own) on the nightly toolchain, one after another,
# each for FUZZ_SECONDS. Not part of `make test`: tests/it/fuzz.rs replays what they found on
# stable. The growing corpora and any crash go under target/fuzz/; tests/fuzz/corpus holds seeds.
# Inputs past max_len only slow a target down (archives need room for a few entries).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= jsonrpc handshake datagram cutter unzip signed_meta
FUZZ_OUT := $(abspath $(TARGET))/fuzz
fuzz: ## run each fuzz target for FUZZ_SECONDS (default 60) on nightly; crashes land in target/fuzz/artifacts/
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_OUT)/corpus/$$t $(FUZZ_OUT)/artifacts/$$t; \
	  echo "== fuzz target $$t for $(FUZZ_SECONDS) s"; \
	  case $$t in unzip) len=65536;; jsonrpc) len=16384;; *) len=8192;; esac; \
	  TMPDIR=$$(test -d /dev/shm && echo /dev/shm || echo $${TMPDIR:-/tmp}) \
	  cargo +nightly fuzz run --fuzz-dir tests/fuzz --target-dir $(FUZZ_OUT)/build -s none $$t \
	    $(FUZZ_OUT)/corpus/$$t tests/fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 \
	    -max_len=$$len -artifact_prefix=$(FUZZ_OUT)/artifacts/$$t/ \
	    -print_final_stats=1 || exit 1; \
	done

lint: fmt-check ## clippy (warnings denied) and rustfmt check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format everything
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

bench: bench-peer ## release build, then the figures from ../shared/spec/quality.md with medians
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory node-deps; \
	  else echo "npm missing: the official-client figure will be skipped"; fi
	BUTLER_BENCH_PEER=$(abspath $(PEER_DIR))/release/butler-bench-peer $(CARGO) bench --locked --bench bench

PEER_DIR := $(or $(CARGO_TARGET_DIR),target)/peer
startup-order: ## re-record the functions a release daemon runs at start (shipped and bench builds), which its link packs together (needs valgrind)
	$(CARGO) build --release --locked --bin butler
	cp $(TARGET)/release/butler $(TARGET)/butler-shipped
	$(CARGO) bench --locked --bench bench --no-run
	release/startup-order.sh release/startup.order $(TARGET)/butler-shipped $(TARGET)/release/butler
	rm $(TARGET)/butler-shipped
	$(CARGO) build --release --locked --bin butler

bench-peer: ## the self_update-based updater that make bench times butler upgrade against (dev-only)
	CARGO_TARGET_DIR=$(PEER_DIR) $(CARGO) build --release --locked --manifest-path tests/bench/peer/Cargo.toml

# The soak restarts the daemon in place into a newer build of the same source, built first (the
# bench build that follows is the one under load).
SOAK_SECONDS ?= 120
SOAK_NEW_VERSION ?= 0.2.0
SOAK_DIR := $(or $(CARGO_TARGET_DIR),target)/soak
soak: ## release build under mixed load for SOAK_SECONDS (default 120) with a restart in place: throughput, errors, RSS
	mkdir -p $(SOAK_DIR)
	BUTLER_BUILD_VERSION=$(SOAK_NEW_VERSION) $(CARGO) build --release --locked --bin butler
	cp $(or $(CARGO_TARGET_DIR),target)/release/butler $(SOAK_DIR)/butler-new
	BENCH_ONLY=soak SOAK_SECONDS=$(SOAK_SECONDS) SOAK_NEW_BIN=$(abspath $(SOAK_DIR))/butler-new \
	  $(CARGO) bench --locked --bench bench

release: ## release binaries and the broth tree in dist/broth: linux-amd64 and windows-amd64 (signed when BUTLER_SIGNING_KEY_FILE names a key)
	$(CARGO) build --release --locked --bin butler
	mkdir -p dist/bin
	strip -o dist/bin/butler $(or $(CARGO_TARGET_DIR),target)/release/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/release/butler dist/bin/butler
	$(CARGO) run --release --locked -p butler-release -- publish --binary dist/bin/butler --out dist/broth
	$(MAKE) windows
	x86_64-w64-mingw32-strip -o dist/bin/butler.exe $(WIN_OUT)/release/butler.exe
	@# The Windows build cannot run here to say its version; it is the same source as the Linux one.
	$(CARGO) run --release --locked -p butler-release -- publish --binary dist/bin/butler.exe \
	  --channel windows-amd64 --version "$$(dist/bin/butler --version | cut -d, -f1)" --out dist/broth

clean:
	$(CARGO) clean

# ---- Windows: built here with Debian's Rust (its std source and -Zbuild-std; rustup cannot fetch
# the Windows std on these machines) and MinGW, tested under Wine. See ../shared/spec/windows.md.
WIN_TARGET ?= x86_64-pc-windows-gnu
WIN_MINGW_GCC := $(if $(findstring i686,$(WIN_TARGET)),i686,x86_64)-w64-mingw32-gcc
# Its own folder: two compilers sharing one target folder rebuild each other's host artifacts.
WIN_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))/windows
WIN_OUT := $(WIN_DIR)/$(WIN_TARGET)
WIN_CARGO := env PATH=/usr/bin:$$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(WIN_DIR) /usr/bin/cargo
WIN_FLAGS := -Zbuild-std=std,panic_abort --target $(WIN_TARGET) --locked
WIN_PACKAGES := rustc-web cargo-web rust-web-src rust-web-clippy gcc-mingw-w64-x86-64 wine
# Test scaffolding, never shipped: a private Wine prefix with the ProcessPrng shim Wine 8 lacks.
WINE_PREFIX := $(WIN_DIR)/wine
WINE_SHIM := $(WINE_PREFIX)/drive_c/windows/system32/bcryptprimitives.dll
WINE_ENV := WINEPREFIX=$(WINE_PREFIX) WINEDEBUG=-all

windows-toolchain: ## install (once; a no-op after) Debian's Rust with its std source, its clippy, MinGW and Wine
	@missing=$$(for p in $(WIN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

lint-windows: windows-toolchain ## clippy for the Windows target, warnings denied (Debian's clippy)
	$(WIN_CARGO) clippy $(WIN_FLAGS) --workspace --all-targets -- -D warnings

windows: lint-windows ## release butler.exe and butler-release.exe in target/windows/$(WIN_TARGET)/release
	$(WIN_CARGO) build $(WIN_FLAGS) --release --workspace --bin butler --bin butler-release
	@ls -l $(WIN_OUT)/release/butler.exe $(WIN_OUT)/release/butler-release.exe

wine-prefix: $(WINE_SHIM) ## the Wine prefix the Windows tests run in (with the test-only ProcessPrng shim)

$(WINE_SHIM): tests/windows/processprng.c tests/windows/processprng.def | windows-toolchain
	@mkdir -p $(WIN_DIR)
	$(WINE_ENV) wineboot -i >/dev/null 2>&1; $(WINE_ENV) wineserver -w
	x86_64-w64-mingw32-gcc -O2 -shared -o $@ $^ -ladvapi32

# The Windows lane: every crate's unit tests run under Wine (cargo's runner), then the Linux-side
# integration tests drive the real butler.exe under Wine (tests/it/windows.rs): an old and a new
# build (BUTLER_BUILD_VERSION; only the butler crate recompiles) for the in-place upgrade, the
# stream-client example as a Windows client of a net.pipe stream server, and the pipe-relay
# example as the Linux tests' way into a daemon on a net.pipe.
WIN_FIXTURES := $(WIN_DIR)/it-fixtures
test-windows: lint-windows wine-prefix node-deps ## Windows unit tests under Wine, then butler.exe under Wine driven from Linux
	$(WINE_ENV) CARGO_TARGET_$(shell echo $(WIN_TARGET) | tr a-z- A-Z_)_RUNNER=wine \
	  $(WIN_CARGO) test $(WIN_FLAGS) --workspace --lib --bins
	mkdir -p $(WIN_FIXTURES)
	BUTLER_BUILD_VERSION=$(IT_NEW_VERSION) $(WIN_CARGO) build $(WIN_FLAGS) --bin butler
	x86_64-w64-mingw32-strip -o $(WIN_FIXTURES)/butler-new.exe $(WIN_OUT)/debug/butler.exe
	$(WIN_CARGO) build $(WIN_FLAGS) --bin butler --example stream_client --example pipe_relay
	x86_64-w64-mingw32-strip -o $(WIN_FIXTURES)/butler-old.exe $(WIN_OUT)/debug/butler.exe
	cp $(WIN_OUT)/debug/examples/stream_client.exe $(WIN_FIXTURES)/stream_client.exe
	cp $(WIN_OUT)/debug/examples/pipe_relay.exe $(WIN_FIXTURES)/pipe_relay.exe
	$(WINE_ENV) BUTLER_WINDOWS_FIXTURES=$(WIN_FIXTURES) $(CARGO) test --locked --test it windows:: -- --ignored
	@# The @itchio/butlerd client's own suite, with tests/windows/butler standing in for butler.
	@tmp=$$(mktemp -d) && cd $$tmp && \
	  if $(WINE_ENV) BUTLER_WINDOWS_EXE=$(WIN_FIXTURES)/butler-old.exe PATH="$(CURDIR)/tests/windows:$$PATH" \
	    node $(CURDIR)/tests/node/node_modules/@itchio/butlerd/lib/tests/index.js > node.log 2>&1; \
	  then echo "node client suite (@itchio/butlerd 15.0.0) against butler.exe under Wine: passed"; rm -rf $$tmp; \
	  else cat node.log; echo "node client suite against butler.exe under Wine: FAILED"; exit 1; fi

# aws-lc-sys assembles its x86 code with NASM for this target (the x86-64 one needs none), and
# rustc links i686 MinGW programs with rsbegin.o/rsend.o (DWARF unwind registration), which a
# rustup toolchain ships and Debian's does not: they are compiled from Debian's std source into
# the target's libdir, where rustc looks for them.
I686_LIBDIR := /usr/lib/rustlib/i686-pc-windows-gnu/lib
windows-386: ## the windows-386 channel's target (i686-pc-windows-gnu): clippy and release build
	$(MAKE) windows-toolchain WIN_PACKAGES="$(WIN_PACKAGES) gcc-mingw-w64-i686 nasm"
	$(MAKE) $(I686_LIBDIR)/rsbegin.o $(I686_LIBDIR)/rsend.o
	$(MAKE) windows WIN_TARGET=i686-pc-windows-gnu

$(I686_LIBDIR)/%.o:
	mkdir -p $(@D)
	RUSTC_BOOTSTRAP=1 /usr/bin/rustc --target i686-pc-windows-gnu --emit=obj -C panic=abort -o $@ \
	  $$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library/rtstartup/$*.rs
