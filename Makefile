# The README's two commands are `make run` and `make test`; each installs what it needs, and a
# second run skips what is already there.

SHELL := /bin/bash
# Build outputs live outside the clone so a fresh clone (CI) reuses the previous build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/sepchat/cargo-target
CARGO ?= cargo
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/sepchat
DEBUG_BIN := $(CARGO_TARGET_DIR)/debug/sepchat

.PHONY: run test system-deps fetch-model build-release bench eval-ppl eval-stream fmt lint

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

## eval-stream: streaming perplexity over 3000 tokens, the columns of ../shared/reference/stream-ppl.md's
## first table (the reference's SepLLM uses the paper's separator set, hence seps=paper).
# Results go outside the clone so they never show up as untracked files.
STREAM_OUT ?= /tmp/stream3000
eval-stream: fetch-model
	$(RELEASE_BIN) eval stream ../shared/data/pg19-test-10146.txt --tokens 3000 \
		--cache dense --cache streaming:a=4,c=512 --cache streaming:a=4,c=420 \
		--cache sep:a=4,s=64,w=256,c=512,seps=paper --cache sep:a=4,s=64,w=256,c=512,seps=paper,pos=abs \
		--json $(STREAM_OUT).json --plot $(STREAM_OUT).svg

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
