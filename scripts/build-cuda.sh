#!/usr/bin/env bash
# Builds `schnell` with `--features cuda` on a machine that has neither a GPU
# nor a CUDA install. The toolkit comes from NVIDIA's PyPI wheels, installed
# into a venv under $SCHNELL_CUDA_HOME (default ~/.cache/schnell-cuda), each
# step skipped when it is already done:
#   - nvcc, headers, nvrtc, cuBLAS, cuRAND and the runtime, pinned to CUDA 13.0.
#     A driver cannot load PTX made by a newer toolkit, and the H200 machines
#     here run driver 580 (CUDA 13.0). nvvm is pinned too: unpinned, pip takes
#     a newer cicc whose PTX version ptxas 13.0 refuses.
#   - lib/stubs/ inside that toolkit, which cudarc's build script searches:
#     unversioned links to the wheels' .so.13/.so.10 libraries, and a stub
#     libcuda.so (SONAME libcuda.so.1) with the driver API's function names,
#     since the driver itself is not in any wheel. At run time the real driver
#     and libraries are found, e.g. through LD_LIBRARY_PATH. Run here with
#     LD_LIBRARY_PATH=<toolkit>/lib/stubs:<toolkit>/lib, the binary starts and
#     sees no GPU (`schnell devices`).
#
# Usage: scripts/build-cuda.sh [build|check]   (default: build)
#   build: cargo build --release --features cuda, binary in
#          $CARGO_TARGET_DIR/release/schnell (default target dir:
#          ~/.cache/schnell-cuda-target, apart from the CPU builds).
#   check: cargo check --features cuda --all-targets; build scripts still run,
#          so every CUDA kernel is compiled by nvcc.
# CUDA_COMPUTE_CAP picks the GPU generation (default 90, Hopper).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-build}"
case "$mode" in build | check) ;; *)
    echo "usage: $0 [build|check]" >&2
    exit 2
    ;;
esac

CUDA_HOME_DIR="${SCHNELL_CUDA_HOME:-$HOME/.cache/schnell-cuda}"
VENV="$CUDA_HOME_DIR/venv"
PINS=(
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
    "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*"
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
)
marker="$CUDA_HOME_DIR/installed-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"
if [ ! -e "$marker" ]; then
    echo "== installing the CUDA 13.0 toolkit wheels into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
    touch "$marker"
fi

CUDA_ROOT="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
stubs="$CUDA_ROOT/lib/stubs"
mkdir -p "$stubs"
for lib in cublas cublasLt cudart nvrtc curand; do
    versioned="$(cd "$CUDA_ROOT/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -1)"
    ln -sfn "../$versioned" "$stubs/lib$lib.so"
done
# Every driver function cuda.h declares, and the versioned symbols its
# #defines point to (cuMemAlloc -> cuMemAlloc_v2). Each returns
# CUDA_ERROR_NO_DEVICE (100), so this build, run here against the stub, acts
# as on a machine without a GPU; on a GPU machine the real libcuda.so.1 is
# found instead.
stub_source="$(
    {
        grep -oE 'CUDAAPI +cu[A-Za-z0-9_]+ *\(' "$CUDA_ROOT/include/cuda.h" | sed -E 's/CUDAAPI +//; s/ *\($//'
        grep -oE '^#define +cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+' "$CUDA_ROOT/include/cuda.h" | awk '{print $3}'
    } | sort -u | sed 's/.*/int &(void) { return 100; }/'
)"
if [ ! -e "$stubs/libcuda.so.1" ] || [ "$stub_source" != "$(cat "$stubs/libcuda_stub.c" 2>/dev/null)" ]; then
    echo "== writing the link stub $stubs/libcuda.so.1" >&2
    printf '%s\n' "$stub_source" >"$stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so.1" "$stubs/libcuda_stub.c"
    ln -sfn libcuda.so.1 "$stubs/libcuda.so"
fi

export CUDA_ROOT
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${SCHNELL_CUDA_TARGET_DIR:-$HOME/.cache/schnell-cuda-target}"
echo "== cargo $mode --features cuda (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_$CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR)" >&2
if [ "$mode" = build ]; then
    cargo build --locked --release --features cuda --bin schnell >&2
    bin="$CARGO_TARGET_DIR/release/schnell"
    # The binary loads and runs here, against the stub driver: it must name
    # both back ends and report CUDA as present but without a device.
    version="$(LD_LIBRARY_PATH="$stubs:$CUDA_ROOT/lib" "$bin" --version)"
    devices="$(LD_LIBRARY_PATH="$stubs:$CUDA_ROOT/lib" "$bin" devices 2>&1)" && {
        echo "schnell devices should fail with no GPU; it printed: $devices" >&2
        exit 1
    }
    case "$version$devices" in
    *"back ends: cpu, cuda"*"cuda: compiled in, no device"*CUDA_ERROR_NO_DEVICE*) ;;
    *)
        printf 'unexpected output from the CUDA build:\n%s\n%s\n' "$version" "$devices" >&2
        exit 1
        ;;
    esac
    echo "== $version; with the stub driver: $(echo "$devices" | grep '^cuda')" >&2
    echo "$bin"
else
    cargo check --locked --features cuda --all-targets
fi
