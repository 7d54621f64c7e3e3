# butler: the entry points. `make run` starts the daemon; `make test` is what CI runs.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: help build run test test-node lint fmt fmt-check bench release clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## debug build of the whole workspace
	$(CARGO) build --workspace --locked

run: ## build and start the daemon on the embedded default database
	$(CARGO) build --locked --bin butler
	./target/debug/butler --json daemon --transport tcp --keep-alive

test: ## every test, then fmt and clippy with warnings denied
	$(CARGO) test --workspace --locked
	$(MAKE) test-node
	$(MAKE) lint

test-node: ## the @itchio/butlerd npm client's own test suite, run against our daemon
	$(CARGO) build --locked --bin butler
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@tmp=$$(mktemp -d) && cd $$tmp && \
	  if PATH="$(CURDIR)/target/debug:$$PATH" node $(CURDIR)/tests/node/node_modules/@itchio/butlerd/lib/tests/index.js > node.log 2>&1; \
	  then echo "node client suite (@itchio/butlerd 15.0.0): passed"; rm -rf $$tmp; \
	  else cat node.log; echo "node client suite: FAILED"; exit 1; fi

lint: fmt-check ## clippy (warnings denied) and rustfmt check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format everything
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

bench: ## release build, then the figures from ../shared/spec/quality.md with medians
	$(CARGO) bench --locked --bench bench

release: ## release binary and the broth tree in dist/broth
	$(CARGO) run --release --locked -p butler-release -- publish

clean:
	$(CARGO) clean
