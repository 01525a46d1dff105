#!/usr/bin/env bash
# diffusers' side of the CPU benchmark: scripts/cpu_peer_bench.py in a venv
# with torch and diffusers, made here if missing. For benchmarks only: the
# tests never need it.
#
#   scripts/cpu-peer-bench.sh --models DIR [--sides 256,512] [--runs 3]
#                             [--threads 2] [--steps-only|--vae-only]
#
# DIR: written by `schnell dev random-models DIR --size bench --quant none`,
# the model `cargo bench --bench flux_cpu` runs. The arguments go to the .py
# as they are; its last line of stdout is the JSON result.
#
# Settings (environment):
#   PEER_VENV  the venv (default $HOME/.cache/schnell-peer-venv)
#   PYTHON     the interpreter that makes it (default python3; 3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PEER_VENV:-$HOME/.cache/schnell-peer-venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "making the venv $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
fi
# Only what is missing is installed (torch is about 1 GB). From PyPI: torch
# from there is the CUDA build, which runs on the CPU as well (its CPU-only
# index is not always reachable).
missing=()
for pkg in torch diffusers transformers safetensors numpy; do
    "$venv/bin/python" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}" pillow
fi

exec "$venv/bin/python" scripts/cpu_peer_bench.py "$@"
