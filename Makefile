# The README's two commands are `make run` and `make test`; each installs what it needs, and a
# second run skips what is already there.

SHELL := /bin/bash
# Build outputs live outside the clone so a fresh clone (CI) reuses the previous build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/sepchat/cargo-target
CARGO ?= cargo
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/sepchat
DEBUG_BIN := $(CARGO_TARGET_DIR)/debug/sepchat
DESKTOP_RELEASE_BIN := $(CARGO_TARGET_DIR)/release/sepchat-desktop
DESKTOP_DEBUG_BIN := $(CARGO_TARGET_DIR)/debug/sepchat-desktop

.PHONY: run test system-deps ui-deps ui-build fetch-model build-release bench eval-ppl eval-stream fmt lint

## run: build the web UI and the app, fetch the default model, and open the desktop window; with no display (no
## DISPLAY or WAYLAND_DISPLAY, and not macOS) serve the same UI on 127.0.0.1 instead and print its URL.
run: system-deps build-release ui-build
	$(RELEASE_BIN) fetch-model
	@if [ "$$(uname -s)" = Darwin ] || [ -n "$${DISPLAY:-}" ] || [ -n "$${WAYLAND_DISPLAY:-}" ]; then \
	  $(CARGO) build --release --locked -p sepchat-desktop && exec $(DESKTOP_RELEASE_BIN); \
	else \
	  echo "no display: serving the UI for a browser instead of opening the desktop window"; \
	  exec $(RELEASE_BIN) serve --ui-dir ui/dist; \
	fi

## test: the whole test suite, with the real default model: Rust, then the UI's unit tests, then the browser tests
## against the real `sepchat serve`, then the real desktop window under Xvfb over WebDriver.
test: system-deps ui-build
	$(CARGO) build --workspace --locked
	$(DEBUG_BIN) fetch-model
	python="$$(./scripts/python-venv.sh)" && SEPCHAT_TEST_PYTHON="$$python" $(CARGO) test --workspace --locked
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd ui && npm run check && npm test
	cd ui && SEPCHAT_BIN=$(DEBUG_BIN) npm run e2e
	./scripts/install-tauri-driver.sh
	python="$$(./scripts/python-venv.sh)" && xvfb-run -a -s "-screen 0 1280x800x24" \
	  "$$python" tests/e2e/desktop_window.py $(DESKTOP_DEBUG_BIN) ui/test-output/screenshots/desktop-window.png

# The UI's npm packages, reinstalled only when the lock file changed (the stamp is newer otherwise).
UI_STAMP := ui/node_modules/.sepchat-installed
ui-deps: $(UI_STAMP)
$(UI_STAMP): ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund
	touch $@

ui-build: ui-deps
	cd ui && npm run build

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
