#!/usr/bin/env bash
# Runs every test of schnell. On a fresh machine it first installs what the
# tests need, skipping whatever is already there:
#   - the wasm32-unknown-unknown Rust target;
#   - a Python venv with huggingface_hub (cache interoperability test),
#     openai and pillow (the official client against `schnell serve`),
#     prometheus_client (its parser reads /metrics) and selenium (drives
#     ChromeDriver in the end-to-end browser test);
#   - Debian's chromium, chromium-driver and nginx (the replicas test);
#     wasm-bindgen-cli at the exact wasm-bindgen version in Cargo.lock;
#     wasm-pack (browser tests) and Trunk 0.21.14 (builds the web app), both
#     from crates.io;
#   - last, scripts/build-cuda.sh installs CUDA 13.0's toolkit wheels from
#     PyPI into ~/.cache/schnell-cuda and builds the CUDA binary.
# Nothing downloads a browser or a tool at run time.
# CARGO_TARGET_DIR is honoured, so CI can keep one build between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every temporary file of the run (the tests' folders, Chromium's profiles,
# the test mirror's files) goes under one folder, removed at the end,
# whatever a tool leaves behind.
RUN_TMP="$(mktemp -d)"
export TMPDIR="$RUN_TMP"
mirror_pid=""
cleanup() {
    if [ -n "$mirror_pid" ]; then kill "$mirror_pid" 2>/dev/null || true; fi
    rm -rf "$RUN_TMP"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    step "installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

VENV="${SCHNELL_TEST_VENV:-$HOME/.cache/schnell-test-venv}"
if ! "$VENV/bin/python" -c 'import huggingface_hub, openai, PIL, selenium, prometheus_client' 2>/dev/null; then
    step "installing huggingface_hub, openai, pillow, selenium and prometheus_client into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check huggingface_hub openai pillow selenium prometheus_client
fi

# nginx lives in /usr/sbin, which is not on every user's PATH.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null || ! [ -x /usr/sbin/nginx ]; then
    step "installing chromium, chromium-driver and nginx"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver nginx-light
fi

WBG_VERSION="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG_VERSION" ]; then
    step "installing wasm-bindgen-cli $WBG_VERSION (matches Cargo.lock)"
    cargo install wasm-bindgen-cli --version "$WBG_VERSION"
fi

if ! command -v wasm-pack >/dev/null; then
    step "installing wasm-pack"
    cargo install --locked wasm-pack
fi

TRUNK_VERSION=0.21.14 # 0.22 needs a newer rustc
if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
    step "installing trunk $TRUNK_VERSION"
    cargo install --locked trunk --version "$TRUNK_VERSION"
fi

# Trunk builds offline (Trunk.toml): every crate, for every target, first.
cargo fetch --locked

step "native: unit, integration and CLI tests (benchmarks run as smoke tests)"
cargo test --locked --all-targets

step "browser: huggingface_file over fetch + Cache API, the SSE reader and token counts, in headless Chromium"
mirror_dir="$(mktemp -d)"
mirror_out="$mirror_dir/url"
cargo run --locked --quiet --example test_mirror -- "$mirror_dir/files" >"$mirror_out" &
mirror_pid=$!
for _ in $(seq 1 600); do
    [ -s "$mirror_out" ] && break
    kill -0 "$mirror_pid" 2>/dev/null || { echo "the test mirror did not start" >&2; exit 1; }
    sleep 0.5
done
# wasm-pack finds chromedriver on PATH and reads webdriver.json (headless flags).
SCHNELL_TEST_MIRROR="$(head -1 "$mirror_out")" WASM_BINDGEN_TEST_TIMEOUT=120 \
    wasm-pack test --headless --chrome --mode no-install -- --locked --test wasm_hub --test wasm_web
kill "$mirror_pid" 2>/dev/null || true

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

step "browser: the web app, built by Trunk and driven end to end against schnell serve"
trunk build --release --dist "$target_dir/dist"
"$VENV/bin/python" tests/python/browser_e2e.py "$target_dir/debug/schnell" "$target_dir/dist" "$target_dir/artefacts"

step "Python huggingface_hub and schnell share one cache"
"$VENV/bin/python" tests/python/interop.py "$target_dir/debug/schnell"

step "the official openai Python client against schnell serve"
"$VENV/bin/python" tests/python/openai_client.py "$target_dir/debug/schnell"

step "two schnell serve replicas behind nginx, as the README sets them up; one is killed mid-load"
"$VENV/bin/python" tests/python/nginx_replicas.py "$target_dir/debug/schnell"

step "CUDA: scripts/build-cuda.sh builds --features cuda (toolkit from PyPI); the binary runs against a stub driver"
# Its own build folder (~/.cache/schnell-cuda-target), kept between runs.
scripts/build-cuda.sh build >/dev/null
