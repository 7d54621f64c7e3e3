# butler: the entry points. `make run` starts the daemon; `make test` is what CI runs.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: help build run test lint fmt fmt-check bench release clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## debug build of the whole workspace
	$(CARGO) build --workspace --locked

run: ## build and start the daemon on the embedded default database
	$(CARGO) build --locked --bin butler
	./target/debug/butler --json daemon --transport tcp --keep-alive

test: ## every test, then fmt and clippy with warnings denied
	$(CARGO) test --workspace --locked
	$(MAKE) lint

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
