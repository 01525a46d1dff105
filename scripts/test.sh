#!/usr/bin/env bash
# Runs every test of schnell. On a fresh machine it first installs what the
# tests need, skipping whatever is already there:
#   - the wasm32-unknown-unknown Rust target (the browser build is checked);
#   - a Python venv with huggingface_hub (cache interoperability test),
#     openai and pillow (the official client against `schnell serve`);
#   - Debian's chromium and chromium-driver, and wasm-bindgen-cli at the exact
#     wasm-bindgen version in Cargo.lock (browser tests of the wasm backend).
# CARGO_TARGET_DIR is honoured, so CI can keep one build between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    step "installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

VENV="${SCHNELL_TEST_VENV:-$HOME/.cache/schnell-test-venv}"
if ! "$VENV/bin/python" -c 'import huggingface_hub, openai, PIL' 2>/dev/null; then
    step "installing huggingface_hub, openai and pillow into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check huggingface_hub openai pillow
fi

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    step "installing chromium and chromium-driver"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi

WBG_VERSION="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG_VERSION" ]; then
    step "installing wasm-bindgen-cli $WBG_VERSION (matches Cargo.lock)"
    cargo install wasm-bindgen-cli --version "$WBG_VERSION"
fi

step "native: unit, integration and CLI tests (benchmarks run as smoke tests)"
cargo test --locked --all-targets

step "browser: the library builds for wasm32"
cargo check --locked --lib --target wasm32-unknown-unknown

step "browser: huggingface_file over fetch + Cache API, in headless Chromium"
mirror_dir="$(mktemp -d)"
mirror_out="$mirror_dir/url"
cargo run --locked --quiet --example test_mirror -- "$mirror_dir/files" >"$mirror_out" &
mirror_pid=$!
trap 'kill "$mirror_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    [ -s "$mirror_out" ] && break
    kill -0 "$mirror_pid" 2>/dev/null || { echo "the test mirror did not start" >&2; exit 1; }
    sleep 0.5
done
SCHNELL_TEST_MIRROR="$(head -1 "$mirror_out")" \
CHROMEDRIVER="$(command -v chromedriver)" \
WASM_BINDGEN_TEST_TIMEOUT=120 \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test --locked --target wasm32-unknown-unknown --test wasm_hub
kill "$mirror_pid" 2>/dev/null || true

step "Python huggingface_hub and schnell share one cache"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
"$VENV/bin/python" tests/python/interop.py "$target_dir/debug/schnell"

step "the official openai Python client against schnell serve"
"$VENV/bin/python" tests/python/openai_client.py "$target_dir/debug/schnell"
