#!/usr/bin/env bash
# schnell against diffusers' FluxPipeline on one GPU, in one call.
#
#   scripts/gpu-bench.sh pack   (here: a machine with Rust, no GPU needed)
#       builds the CUDA binary (scripts/build-cuda.sh), strips and compresses
#       it into .gpu/schnell.xz, and downloads the diffusers wheel into
#       .gpu/wheels/ (pure Python).
#       .gpu/ is ignored by git; carry it to the GPU machine.
#   scripts/gpu-bench.sh run    (there: Python with torch, transformers,
#                                safetensors; no Rust, no network)
#       1. writes real-size random weights (`schnell dev random-models`):
#          bf16 safetensors, Q8_0 and Q4_0 GGUF, with T5 to match;
#       2. points an offline Hugging Face cache at them (no copies);
#       3. runs scripts/gpu_bench.py: `schnell serve` in bf16 (1024², 2048²),
#          FluxPipeline in bf16 at 1024² from the same files and initial
#          noise, schnell in f32 (1024², 2048²), then Q8_0 and Q4_0 (1024²);
#          per-step and total times, peak GPU memory, PSNR between the images;
#       4. leaves results.md, results.json, the logs and the images in $OUT.
#
# Settings (environment), with the GPU run's defaults:
#   SIZE=real  DEVICE=cuda  SIDE=1024  BIG_SIDE=2048  STEPS=4  QUANTS=q8_0,q4_0
#   WORK=/dev/shm/schnell-gpu-bench, or /tmp/... if /dev/shm has under 40 GB
#   free (one set of weights at a time: at most about 34 GB at real size)
#   SCHNELL_BIN (default: .gpu/schnell.xz, unpacked)  PYTHON=python3
#   OUT=$OUT or ./gpu-bench-out
#   SKIP_F32=1, SKIP_DIFFUSERS=1 leave those runs out.
# Rehearsal on a CPU (see BENCHMARKS.md):
#   SIZE=bench DEVICE=cpu SIDE=256 BIG_SIDE=512 SCHNELL_BIN=<release build> \
#   PYTHON=<venv with torch and diffusers> scripts/gpu-bench.sh run
set -euo pipefail
cd "$(dirname "$0")/.."

elapsed() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }

pack() {
    mkdir -p .gpu/wheels
    local bin
    bin="$(scripts/build-cuda.sh build | tail -1)"
    # Stripped it is about 75 MB, over what a device call carries (64 MiB):
    # compressed, about 10 MB.
    strip -o .gpu/schnell "$bin"
    xz -T0 -6 -f .gpu/schnell
    ls -l .gpu/schnell.xz
    # diffusers' own code; its other needs are on the GPU machine already.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d .gpu/wheels "diffusers==${DIFFUSERS_VERSION:-0.42.1}"
    ls -l .gpu/wheels
    du -sh .gpu
}

run() {
    local size="${SIZE:-real}" device="${DEVICE:-cuda}"
    # The main runs' dtype: bf16 on a GPU; f32 on a CPU, where candle has no
    # bf16 convolution.
    local dtype="${DTYPE:-$([ "${DEVICE:-cuda}" = cuda ] && echo bf16 || echo f32)}"
    local bin="${SCHNELL_BIN:-/tmp/schnell-gpu-bench/schnell}" python="${PYTHON:-python3}"
    # The weights go to memory if /dev/shm has room for the largest set
    # (about 34 GB at real size), else to disk.
    local work="${WORK:-}"
    if [ -z "$work" ]; then
        local shm_free
        shm_free="$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ' || echo 0)"
        if [ "${shm_free:-0}" -ge 40 ]; then
            work=/dev/shm/schnell-gpu-bench
        else
            work=/tmp/schnell-gpu-bench
        fi
    fi
    local out="${OUT:-$PWD/gpu-bench-out}"
    mkdir -p "$out" "$work"
    if [ -z "${SCHNELL_BIN:-}" ]; then
        [ -e .gpu/schnell.xz ] || { echo "no .gpu/schnell.xz: run '$0 pack' first, or set SCHNELL_BIN" >&2; exit 1; }
        mkdir -p "$(dirname "$bin")"
        "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            .gpu/schnell.xz "$bin"
        chmod +x "$bin"
    fi

    if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/schnell-site .gpu/wheels/*.whl
        export PYTHONPATH="/tmp/schnell-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [ "$device" = cuda ]; then
        # The CUDA 13 libraries schnell links (cuBLAS, cuRAND, NVRTC, the
        # runtime) from the Python environment's NVIDIA wheels; the driver's
        # libcuda.so.1 is the system's.
        local libs
        libs="$("$python" -c 'import glob, os, nvidia
dirs = {os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so.*"), recursive=True)}
print(":".join(sorted(dirs)))')"
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    fi
    "$bin" --version | tee "$out/version.txt"
    "$bin" devices | tee -a "$out/version.txt" || { [ "$device" = cpu ] || exit 1; }

    # One set of weights on disk at a time (bf16 with its T5, then each GGUF
    # type with its T5): all at once would be about 60 GB at real size. The
    # weights are seeded, so every set holds the same model.
    local quants="${QUANTS:-q8_0,q4_0}" configs
    rm -f "$out/results.json"
    for set in none ${quants//,/ }; do
        if [ "$set" = none ]; then
            # Most telling first: if the call runs out of time, what ran is kept.
            configs="$dtype"
            [ -n "${SKIP_DIFFUSERS:-}" ] || configs+=,diffusers
            [ -n "${SKIP_F32:-}" ] || [ "$dtype" = f32 ] || configs+=,f32
        else
            # candle's quantized kernels, then the same layers dequantized to
            # bf16 per product (SCHNELL_GGUF_GPU_PRODUCT=dequantize).
            configs="$set"
            [ "$device" = cpu ] || configs+=",$set+dequantize"
        fi
        elapsed "writing the $size random-weight model ($set) into $work/models"
        rm -rf "$work/models"
        "$bin" dev random-models "$work/models" --size "$size" --quant "$set"
        df -h "$work" | tail -1
        link_cache "$work/models" "$work/cache"
        elapsed "running $configs"
        PYTHONUNBUFFERED=1 "$python" scripts/gpu_bench.py run --bin "$bin" --models "$work/models" \
            --cache "$work/cache" --out "$out" --device "$device" --side "${SIDE:-1024}" \
            --big-side "${BIG_SIDE:-2048}" --steps "${STEPS:-4}" --dtype "$dtype" --configs "$configs"
    done
    rm -rf "$work/models" "$work/cache"
    elapsed "done: $out/results.md"
}

# An offline Hugging Face cache over a random-models folder: refs/main names
# a made-up commit whose snapshot links to the written files, as the Hub's
# layout links to blobs. Nothing is copied.
link_cache() {
    local models="$1" cache="$2" commit=0000000000000000000000000000000000000001
    rm -rf "$cache"
    (cd "$models" && find . -type f ! -name README.md) | while read -r f; do
        f="${f#./}"
        local org="${f%%/*}" rest="${f#*/}"
        local name="${rest%%/*}" path="${rest#*/}"
        local repo="$cache/models--$org--$name"
        mkdir -p "$repo/refs" "$(dirname "$repo/snapshots/$commit/$path")"
        printf '%s' "$commit" >"$repo/refs/main"
        ln -sfn "$models/$f" "$repo/snapshots/$commit/$path"
    done
}

case "${1:-}" in
pack) pack ;;
run) run ;;
*)
    echo "usage: $0 pack|run (see the comment at the top)" >&2
    exit 2
    ;;
esac
