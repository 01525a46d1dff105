#!/usr/bin/env bash
# Runs every test of schnell. On a fresh machine it first installs what the
# tests need, skipping whatever is already there:
#   - the wasm32-unknown-unknown Rust target;
#   - a Python venv with huggingface_hub (cache interoperability test),
#     openai and pillow (the official client against `schnell serve`),
#     prometheus_client (its parser reads /metrics) and selenium (drives
#     ChromeDriver in the end-to-end browser test);
#   - Debian's chromium, chromium-driver and nginx (the replicas test);
#     wasm-bindgen-cli at the exact wasm-bindgen version in Cargo.lock (its
#     test runner drives the browser tests) and Trunk 0.21.14 (builds the web
#     app), both from crates.io, built at opt-level 1 (tools, not products:
#     half the build time);
#   - near the end, scripts/build-cuda.sh installs CUDA 13.0's toolkit wheels
#     from PyPI into ~/.cache/schnell-cuda and builds the CUDA binary;
#   - last, scripts/check-aarch64.sh unpacks Debian's rustc-web with its
#     aarch64 standard library and GCC's aarch64 cross compiler (fetched with
#     apt-get download) into ~/.cache/schnell-aarch64 and checks the crate
#     for aarch64.
# Nothing downloads a browser or a tool at run time.
# CARGO_TARGET_DIR is honoured, so CI can keep one build between runs.
# Each step's time is printed at the end, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every temporary file of the run (the tests' folders, Chromium's profiles,
# the test mirror's files) goes under one folder, removed at the end,
# whatever a tool leaves behind.
RUN_TMP="$(mktemp -d)"
export TMPDIR="$RUN_TMP"
mirror_pid=""
pids=()
cleanup() {
    local status=$?
    if [ -n "$mirror_pid" ]; then kill "$mirror_pid" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$RUN_TMP"
    report_times
    return "$status"
}
trap cleanup EXIT

# Each step's name and its start, for the table printed at the end.
STEP_NAMES=()
STEP_STARTS=()
step() {
    printf '\n== %s\n' "$*"
    STEP_NAMES+=("$*")
    STEP_STARTS+=("$(date +%s)")
}
report_times() {
    local now i next
    now="$(date +%s)"
    [ "${#STEP_NAMES[@]}" -gt 0 ] || return 0
    printf '\n== time per step\n'
    for i in "${!STEP_NAMES[@]}"; do
        next="${STEP_STARTS[$((i + 1))]:-$now}"
        printf '%6ss  %s\n' "$((next - STEP_STARTS[i]))" "${STEP_NAMES[i]:0:100}"
    done
    printf '%6ss  in all\n' "$((now - STEP_STARTS[0]))"
}

step "checking the tools"
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

# The tools are built at opt-level 1: they process a few files, and a full
# release build of them takes about twice as long.
# They share one build folder, so the dependencies they have in common
# (serde, tokio, clap, …) are built once.
tool_profile=(env CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
    CARGO_TARGET_DIR="$HOME/.cache/schnell-tools-target")
WBG_VERSION="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG_VERSION" ]; then
    step "installing wasm-bindgen-cli $WBG_VERSION (matches Cargo.lock)"
    # Not --locked: its lock file pins a webpki-roots that crates.io yanked.
    "${tool_profile[@]}" cargo install wasm-bindgen-cli --version "$WBG_VERSION"
fi

TRUNK_VERSION=0.21.14 # 0.22 needs a newer rustc
if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
    step "installing trunk $TRUNK_VERSION"
    "${tool_profile[@]}" cargo install --locked trunk --version "$TRUNK_VERSION"
fi

step "fetching every crate, for every target (Trunk builds offline: Trunk.toml)"
cargo fetch --locked

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

step "native: unit, integration and CLI tests, examples built (benchmarks run as smoke tests)"
cargo test --locked --all-targets
# The full-disk test mounts a tmpfs in a user namespace: run where the
# machine allows that (CI's does), reported as skipped where it does not.
if unshare -Urm sh -c "mount -t tmpfs -o size=1M tmpfs '$RUN_TMP'" 2>/dev/null; then
    cargo test --locked --test hub_native -- --ignored
else
    echo "SKIPPED: tests/hub_native.rs's full-disk test (no tmpfs mount in a user namespace here)"
fi

step "native: the README's and the docs' Rust examples (doc-tests)"
cargo test --locked --doc

step "the test mirror (tiny random-weight models), for the examples and the browser tests"
mirror_dir="$(mktemp -d)"
mirror_out="$mirror_dir/url"
cargo run --locked --quiet --example test_mirror -- "$mirror_dir/files" >"$mirror_out" &
mirror_pid=$!
for _ in $(seq 1 600); do
    [ -s "$mirror_out" ] && break
    kill -0 "$mirror_pid" 2>/dev/null || { echo "the test mirror did not start" >&2; exit 1; }
    sleep 0.5
done
MIRROR_URL="$(head -1 "$mirror_out")"

step "examples/ on the tiny models: generate (one-shot and stream), fetch files, embed the server"
examples_dir="$(mktemp -d)"
# Sealed off from the user's own Hub settings: the mirror, a new cache, no token.
run_example() {
    echo "-- cargo run --example $*"
    HF_ENDPOINT="$MIRROR_URL" HF_HOME="$examples_dir/home" HF_HUB_CACHE="$examples_dir/cache" HF_TOKEN= \
        cargo run --locked --quiet --example "$@"
}
run_example generate_image -- "a red fox" "$examples_dir/one_shot.png"
run_example generate_stream -- "a red fox" "$examples_dir/streamed.png"
for png in one_shot.png streamed.png; do
    [ -s "$examples_dir/$png" ] || { echo "examples/: no $png was written" >&2; exit 1; }
done
cmp -s "$examples_dir/one_shot.png" "$examples_dir/streamed.png" ||
    { echo "examples/: the one-shot and the streamed image differ (same prompt and seed)" >&2; exit 1; }
run_example fetch_files
run_example embed_server

step "browser: huggingface_file over fetch + Cache API, the SSE reader and token counts, in headless Chromium"
# wasm-bindgen's own test runner (from wasm-bindgen-cli) drives Chromium
# through ChromeDriver, with the capabilities in webdriver.json (headless).
# The runner is set in .cargo/config.toml. The tests that need the mirror
# are #[ignore]d for plain runs.
SCHNELL_TEST_MIRROR="$MIRROR_URL" WASM_BINDGEN_TEST_TIMEOUT=120 \
    CHROMEDRIVER="$(command -v chromedriver)" \
    cargo test --locked --target wasm32-unknown-unknown --test wasm_hub --test wasm_web -- --include-ignored
kill "$mirror_pid" 2>/dev/null || true
mirror_pid=""

step "browser: the web app, built by Trunk (the dev profile the browser tests built) and driven end to end against schnell serve"
trunk build --dist "$target_dir/dist"
"$VENV/bin/python" tests/python/browser_e2e.py "$target_dir/debug/schnell" "$target_dir/dist" "$target_dir/artefacts"

# These three start their own servers on free ports and mostly wait on them:
# they run side by side, each into its own log, printed in turn.
step "side by side: Python huggingface_hub shares schnell's cache; the official openai client; two replicas behind nginx, one killed mid-load"
logs="$(mktemp -d)"
names=(interop openai_client nginx_replicas)
for name in "${names[@]}"; do
    "$VENV/bin/python" "tests/python/$name.py" "$target_dir/debug/schnell" >"$logs/$name.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!names[@]}"; do
    if wait "${pids[i]}"; then result=passed; else result=FAILED; failed=1; fi
    printf -- '-- tests/python/%s.py: %s\n' "${names[i]}" "$result"
    cat "$logs/${names[i]}.log"
done
[ "$failed" = 0 ] || exit 1

step "CUDA: scripts/build-cuda.sh builds --features cuda (toolkit from PyPI); the binary runs against a stub driver"
# Its own build folder (~/.cache/schnell-cuda-target), kept between runs.
scripts/build-cuda.sh build >/dev/null

step "aarch64: cargo check --target aarch64-unknown-linux-gnu (scripts/check-aarch64.sh; Debian's rustc-web and cross GCC, unpacked, not installed)"
# Its own build folder (~/.cache/schnell-aarch64-target), kept between runs.
scripts/check-aarch64.sh
