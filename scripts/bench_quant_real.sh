#!/usr/bin/env bash
# Real-size quantized FLUX.1-schnell on this machine's CPU, with random
# weights (the images are noise): the real architecture, sizes, file names,
# tensor names and per-tensor types, fetched through `schnell mirror` like
# the real files, then run by `schnell generate` exactly as a user runs it.
#
# For each type in $QUANTS (default: q4_0 q8_0), resident and --low-memory:
# the whole process's peak RSS (GNU time) and the time of each stage.
#
#   scripts/bench_quant_real.sh            # needs ~60 GB of disk, ~40 min on 2 cores
#   SIDE=512 STEPS=1 QUANTS="q4_0" MODES=low-memory scripts/bench_quant_real.sh
#
# The models and the cache live in $WORK (default ~/.cache/schnell-bench-real),
# kept between runs: a second run only measures. PREPARE_ONLY=1 writes and
# fetches the models and stops, so the measured runs can have the machine alone.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${WORK:-$HOME/.cache/schnell-bench-real}"
QUANTS="${QUANTS:-q4_0 q8_0}"
SIDE="${SIDE:-256}"
STEPS="${STEPS:-1}"
MODES="${MODES:-resident low-memory}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/schnell-release-target}"
BIN="$CARGO_TARGET_DIR/release/schnell"

cargo build --release --locked --quiet
mkdir -p "$WORK"
cache="$WORK/cache"

missing=()
for q in $QUANTS; do
    [ -e "$WORK/fetched-$q" ] || missing+=("$q")
done
if [ "${#missing[@]}" -gt 0 ]; then
    list="$(IFS=,; echo "${missing[*]}")"
    echo "== writing real-size random models ($list) into $WORK/models"
    /usr/bin/time -f "written in %e s, peak RSS %M KB" \
        "$BIN" dev random-models "$WORK/models" --size real --quant "$list"
    "$BIN" mirror --dir "$WORK/models" --addr 127.0.0.1:0 >"$WORK/mirror.out" &
    mirror=$!
    trap 'kill $mirror 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do grep -q "^serving" "$WORK/mirror.out" 2>/dev/null && break; sleep 0.2; done
    endpoint="$(sed -n 's/^serving .* at \(http:[^ ]*\)$/\1/p' "$WORK/mirror.out")"
    for q in "${missing[@]}"; do
        echo "== fetching $q through the mirror ($endpoint)"
        /usr/bin/time -f "fetched in %e s" \
            "$BIN" fetch --model flux-schnell --quant "$q" --endpoint "$endpoint" --cache-dir "$cache" >/dev/null
        touch "$WORK/fetched-$q"
    done
    kill "$mirror" 2>/dev/null || true
    # The cache holds its own copy; the written files are no longer needed.
    rm -rf "$WORK/models"
fi

[ -n "${PREPARE_ONLY:-}" ] && exit 0

echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; ${SIDE}x${SIDE}, $STEPS step(s), seed 1"
for q in $QUANTS; do
    for mode in $MODES; do
        flag=()
        [ "$mode" = low-memory ] && flag=(--low-memory)
        out="$WORK/run-$q-$mode.txt"
        HF_HUB_OFFLINE=1 HF_HUB_CACHE="$cache" /usr/bin/time -v \
            "$BIN" generate "a red fox in the snow" --width "$SIDE" --height "$SIDE" --steps "$STEPS" \
            --seed 1 --quant "$q" "${flag[@]}" -o "$WORK/$q-$mode.png" >"$out" 2>&1 || {
            cat "$out"
            exit 1
        }
        rss_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out")"
        printf '%-5s %-11s peak RSS %5.2f GB | %s\n' "$q" "$mode" \
            "$(awk -v k="$rss_kb" 'BEGIN {print k * 1024 / 1e9}')" "$(grep '^timings:' "$out")"
        grep "^weights:" "$out" | sed 's/^/      /'
    done
done
