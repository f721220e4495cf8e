# The README's two commands are `make run` and `make test`; each installs what it needs, and a
# second run skips what is already there.

SHELL := /bin/bash
# Build outputs live outside the clone so a fresh clone (CI) reuses the previous build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/sepchat/cargo-target
CARGO ?= cargo
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/sepchat
DEBUG_BIN := $(CARGO_TARGET_DIR)/debug/sepchat

.PHONY: run test system-deps fetch-model build-release bench eval-ppl fmt lint

## run: build the app and start chatting with the default model.
run: system-deps build-release
	$(RELEASE_BIN) fetch-model
	$(RELEASE_BIN) chat

## test: the whole test suite, with the real default model.
test: system-deps
	$(CARGO) build --workspace --locked
	$(DEBUG_BIN) fetch-model
	$(CARGO) test --workspace --locked
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

system-deps:
	./scripts/install-system-deps.sh

build-release:
	$(CARGO) build --release --locked -p sepchat-cli

fetch-model: build-release
	$(RELEASE_BIN) fetch-model

## bench / eval-ppl: the measurements recorded in docs/BENCHMARKS.md (release build).
bench: fetch-model
	$(RELEASE_BIN) bench

eval-ppl: fetch-model
	$(RELEASE_BIN) eval ppl ../shared/data/pg19-test-10146.txt --ctx 512 --max-chars 60000

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
