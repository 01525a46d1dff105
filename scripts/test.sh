#!/usr/bin/env bash
# Runs every test of schnell. On a fresh machine it first installs what the
# tests need, skipping whatever is already there:
#   - the wasm32-unknown-unknown Rust target (the browser build is checked);
#   - a Python venv with huggingface_hub (cache interoperability test),
#     openai and pillow (the official client against `schnell serve`).
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

step "native: unit, integration and CLI tests (benchmarks run as smoke tests)"
cargo test --locked --all-targets

step "browser: the library builds for wasm32"
cargo check --locked --lib --target wasm32-unknown-unknown

step "Python huggingface_hub and schnell share one cache"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
"$VENV/bin/python" tests/python/interop.py "$target_dir/debug/schnell"

step "the official openai Python client against schnell serve"
"$VENV/bin/python" tests/python/openai_client.py "$target_dir/debug/schnell"
