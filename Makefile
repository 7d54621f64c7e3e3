# butler: the entry points. `make run` starts the daemon; `make test` is what CI runs.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: help build run test test-node node-deps test-browser it-fixtures lint fmt fmt-check bench release clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## debug build of the whole workspace
	$(CARGO) build --workspace --locked

run: ## build and start the daemon on the embedded default database
	$(CARGO) build --locked --bin butler
	./target/debug/butler --json daemon --transport tcp --keep-alive

test: it-fixtures node-deps ## every test, then fmt and clippy with warnings denied
	BUTLER_IT_FIXTURES=$(abspath $(IT_FIXTURES)) $(CARGO) test --workspace --locked
	$(MAKE) test-node
	$(MAKE) test-browser
	$(MAKE) lint

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
	BUTLER_BUILD_VERSION=$(IT_NEW_VERSION) $(CARGO) build --locked --bin butler
	strip -o $(IT_FIXTURES)/butler-new $(or $(CARGO_TARGET_DIR),target)/debug/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/debug/butler $(IT_FIXTURES)/butler-new
	$(CARGO) build --locked --bin butler
	strip -o $(IT_FIXTURES)/butler-old $(or $(CARGO_TARGET_DIR),target)/debug/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/debug/butler $(IT_FIXTURES)/butler-old

lint: fmt-check ## clippy (warnings denied) and rustfmt check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format everything
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

bench: ## release build, then the figures from ../shared/spec/quality.md with medians
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory node-deps; \
	  else echo "npm missing: the official-client figure will be skipped"; fi
	$(CARGO) bench --locked --bench bench

release: ## release binary and the broth tree in dist/broth (signed when BUTLER_SIGNING_KEY_FILE names a key)
	$(CARGO) build --release --locked --bin butler
	mkdir -p dist/bin
	strip -o dist/bin/butler $(or $(CARGO_TARGET_DIR),target)/release/butler 2>/dev/null || cp $(or $(CARGO_TARGET_DIR),target)/release/butler dist/bin/butler
	$(CARGO) run --release --locked -p butler-release -- publish --binary dist/bin/butler --out dist/broth

clean:
	$(CARGO) clean
