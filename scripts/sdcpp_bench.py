#!/usr/bin/env python3
"""stable-diffusion.cpp's FLUX.1-schnell timed on the CPU, as a peer of
schnell on the same GGUF files: one text-to-image generation per image side
(seed 1, cfg_scale 1.0, euler, 1 step by default), through the Python binding
stable-diffusion-cpp-python (its `StableDiffusion` class, ggml's CPU backend).

What it measures, per side, taken from stable-diffusion.cpp's own log lines
(captured through the library's log callback, each stamped on arrival):
  - text_encoding_s  "get_learned_condition completed, taking X" (T5 + CLIP-L)
  - sampling_s       "sampling completed, taking X"; step_s: per step, the
                     times that its progress callback reports, and
                     step_wall_s: the same measured here between callbacks
  - vae_decode_s     "decode_first_stage completed, taking X"
  - generate_s       "generate_image completed in X"; wall_s: the Python
                     call around it (image conversion included)
  - *_graph_s        "computing condition graph completed, taking X ms" and
                     "computing vae decode graph completed, taking X": the
                     same stages' graphs alone (0.4.x prints stage times in
                     %.2fs, older versions in ms: both are read)
and once: load_s (building the context: reading the weights), the process's
peak RSS in KiB (/proc/self/status VmHWM and resource.getrusage's ru_maxrss)
after loading and after each side (cumulative: the sides run in the given
order in one process, so for one side's own peak pass that side alone), the
CPU-features line of its system info (AVX512, AVX512_VNNI, ...) and whether
ggml repacked weights (its "repack tensor" lines, which ggml writes to fd 2:
captured too). stable-diffusion.cpp 0.4.x does not ask ggml for its
CPU_REPACK buffer, so its Q4_0 weights stay as in the file: expect
"repacked": false.
Everything the library logs goes to stderr; the last line of stdout is one
JSON object.

Install the venv (built from source for this machine's instructions):

  python3 -m venv /root/.cache/sdcpp-venv
  CMAKE_ARGS="-DGGML_NATIVE=ON" nice -n 19 /root/.cache/sdcpp-venv/bin/pip install \
      --no-binary stable-diffusion-cpp-python stable-diffusion-cpp-python

(pillow comes with it.) Run:

  /root/.cache/sdcpp-venv/bin/python scripts/sdcpp_bench.py \
      --flux flux1-schnell-Q4_0.gguf --clip-l clip_l.safetensors \
      --t5 t5-v1_1-xxl-encoder-Q4_K_S.gguf --vae ae.safetensors \
      --sides 256,512 --steps 1 --threads 2 --out /tmp/sdcpp-out

stable-diffusion.cpp fixes CLIP-L (768 wide) and T5-XXL (4096 wide, 24
blocks) and reads FLUX's vector_in from 768: files of other widths are
refused while loading ("has wrong shape in model file"), and then the JSON
has "error" and "log_errors" and the exit status is 1.

`--parse-log FILE` only parses a saved log (one generation's lines) and
prints what it found, without loading anything: a check of the parsing.
"""

import argparse
import json
import os
import re
import resource
import sys
import threading
import time

# ---------------------------------------------------------------- parsing

# stable-diffusion.cpp's lines (src/stable-diffusion.cpp); the unit was "ms"
# in older versions and is "%.2fs" in 0.4.x, so both are read.
_NUM = r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b"
PATTERNS = {
    "text_encoding_s": re.compile(r"get_learned_condition completed, taking " + _NUM),
    "sampling_s": re.compile(r"(?<!\(high noise\) )sampling completed, taking " + _NUM),
    "vae_decode_s": re.compile(r"decode_first_stage completed, taking " + _NUM),
    "generate_s": re.compile(r"generate_image completed in " + _NUM),
    # finer-grained (ms) graph-only times of the same two stages
    "text_encoding_graph_s": re.compile(r"computing condition graph completed, taking " + _NUM),
    "vae_decode_graph_s": re.compile(r"computing vae decode graph completed, taking " + _NUM),
}
SAMPLING_METHOD = re.compile(r"sampling using (\S+) method")
# Logged after the conditioning, right before the sampling's clock starts
# ("sampling using" comes before get_learned_condition in 0.4.x).
SAMPLING_START = re.compile(r"generating image: \d+/\d+ - seed")
# The pretty_progress line when no progress callback is set (a child's stdout).
PROGRESS_LINE = re.compile(r"\|\s*(\d+)/(\d+) - ([0-9.]+)(s/it|it/s)")
SYSTEM_INFO = re.compile(r"((?:[A-Z0-9_]+ = \d \|\s*)+)")
REPACK = re.compile(r"repack tensor (\S+) with (\S+)")


def seconds(value, unit):
    return float(value) / 1000.0 if unit == "ms" else float(value)


def parse_log(lines):
    """Stage times in seconds from the lines of one generation (lines are
    (t, text) pairs or plain strings), per-step times from its progress
    lines where the text has them, and the timestamps of the sampling's start
    and end where the lines have times."""
    out = {"step_s_log": []}
    for item in lines:
        t, text = item if isinstance(item, tuple) else (None, item)
        for key, pat in PATTERNS.items():
            m = pat.search(text)
            if m:
                out[key] = seconds(m.group(1), m.group(2))
                if key == "sampling_s":
                    out["_sampling_end_t"] = t
        m = SAMPLING_METHOD.search(text)
        if m:
            out["sample_method"] = m.group(1)
            out.setdefault("_sampling_start_t", t)
        if SAMPLING_START.search(text):
            out["_sampling_start_t"] = t
        for m in PROGRESS_LINE.finditer(text):
            v = float(m.group(3))
            out["step_s_log"].append(v if m.group(4) == "s/it" else 1.0 / v)
    return out


def features_line(text):
    """The CPU-features part of the system info, on one line."""
    m = SYSTEM_INFO.search(" ".join(text.split()))
    return m.group(1).strip() if m else None


def feature_flags(line):
    return {k: v == "1" for k, v in re.findall(r"(\w+) = (\d)", line or "")}


# ---------------------------------------------------------------- memory


def vm_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: now; VmHWM: the peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_now():
    return {
        "vm_hwm_kib": vm_kib("VmHWM"),
        "vm_rss_kib": vm_kib("VmRSS"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# ---------------------------------------------------------------- capture


class Capture:
    """Everything the library says, stamped: its own log (the log callback),
    its progress callback, and ggml's messages, which ggml writes to fd 2
    itself (sd.cpp sets ggml's default logger): fd 2 goes through a pipe
    whose reader copies it to the real stderr."""

    def __init__(self):
        self.lines = []  # (t, text) from the sd log callback and from fd 2
        self.progress = []  # (t, step, steps, reported seconds)
        self.lock = threading.Lock()
        self.err = os.fdopen(os.dup(2), "w", buffering=1)
        self._pipe_thread = None

    def echo(self, text):
        self.err.write(text if text.endswith("\n") else text + "\n")
        self.err.flush()

    def add(self, text):
        t = time.perf_counter()
        with self.lock:
            for part in text.splitlines():
                if part.strip():
                    self.lines.append((t, part))
        self.echo(text)

    def start_fd2(self):
        r, w = os.pipe()
        sys.stderr.flush()
        os.dup2(w, 2)
        os.close(w)
        sys.stderr = self.err  # Python's own messages skip the pipe

        def pump():
            buf = b""
            with os.fdopen(r, "rb", buffering=0) as f:
                while True:
                    chunk = f.read(65536)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self.add(line.decode("utf-8", "replace"))
            if buf:
                self.add(buf.decode("utf-8", "replace"))

        self._pipe_thread = threading.Thread(target=pump, daemon=True)
        self._pipe_thread.start()

    def stop_fd2(self):
        if self._pipe_thread is None:
            return
        os.dup2(self.err.fileno(), 2)  # closes the pipe's write end
        self._pipe_thread.join(timeout=5)
        self._pipe_thread = None

    def mark(self):
        with self.lock:
            return len(self.lines), len(self.progress)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- run


def side_result(cap, mark, steps, wall_s):
    """The numbers of one generation from what was captured since mark."""
    with cap.lock:
        lines = cap.lines[mark[0]:]
        progress = cap.progress[mark[1]:]
    got = parse_log(lines)
    start, end = got.pop("_sampling_start_t", None), got.pop("_sampling_end_t", None)
    # Sampling steps only: the progress callback also reports VAE tiles and
    # file loading, outside the sampling's log lines.
    if start is not None:
        progress = [p for p in progress if p[0] >= start and (end is None or p[0] <= end)]
    progress = [p for p in progress if p[1] > 0 and p[2] == steps]
    step_s = [round(p[3], 4) for p in progress]
    walls, prev = [], start
    for p in progress:
        if prev is not None:
            walls.append(round(p[0] - prev, 4))
        prev = p[0]
    res = {
        "steps": steps,
        "text_encoding_s": got.get("text_encoding_s"),
        "sampling_s": got.get("sampling_s"),
        "per_step_s": (round(got["sampling_s"] / steps, 4) if got.get("sampling_s") is not None else None),
        "step_s": step_s or got.get("step_s_log") or None,
        "step_wall_s": walls or None,
        "vae_decode_s": got.get("vae_decode_s"),
        "generate_s": got.get("generate_s"),
        "text_encoding_graph_s": got.get("text_encoding_graph_s"),
        "vae_decode_graph_s": got.get("vae_decode_graph_s"),
        "wall_s": round(wall_s, 4),
        "sample_method": got.get("sample_method"),
    }
    missing = [k for k in ("text_encoding_s", "sampling_s", "vae_decode_s", "generate_s") if res[k] is None]
    if missing:
        res["missing_from_log"] = missing
    return res


def run(args):
    import ctypes

    # Importing the binding registers its own log callback; ours replaces it.
    from stable_diffusion_cpp import StableDiffusion
    import stable_diffusion_cpp as sdc
    import stable_diffusion_cpp.stable_diffusion_cpp as lib

    cap = Capture()

    @lib.sd_log_callback
    def on_log(level, text, data):
        tag = ("DEBUG", "INFO", "WARN", "ERROR")[level] if 0 <= level < 4 else str(level)
        cap.add(f"[{tag:5}] " + text.decode("utf-8", "replace").rstrip("\n"))

    @lib.sd_progress_callback
    def on_progress(step, steps, secs, data):
        with cap.lock:
            cap.progress.append((time.perf_counter(), step, steps, secs))

    lib.sd_set_log_callback(on_log, ctypes.c_void_p(0))
    lib.sd_set_progress_callback(on_progress, ctypes.c_void_p(0))
    cap.callbacks = (on_log, on_progress)  # kept alive while C holds them

    system_info = lib.sd_get_system_info().decode("utf-8", "replace")
    feats = features_line(system_info)
    log(f"stable-diffusion-cpp-python {getattr(sdc, '__version__', '?')}, "
        f"stable-diffusion.cpp {lib.sd_version().decode()} ({lib.sd_commit().decode()})")
    log(f"CPU features: {feats}")

    os.makedirs(args.out, exist_ok=True)
    cap.start_fd2()
    results, error = {}, None
    try:
        t0 = time.perf_counter()
        sd = StableDiffusion(
            diffusion_model_path=args.flux,
            clip_l_path=args.clip_l,
            t5xxl_path=args.t5,
            vae_path=args.vae,
            n_threads=args.threads,
            vae_decode_only=True,
            keep_clip_on_cpu=True,
            verbose=True,
        )
        load_s = time.perf_counter() - t0
        # new_sd_ctx's NULL comes back as a NULL pointer, not None, which the
        # binding 0.4.x takes for a context (and frees at exit: a segfault).
        inner = getattr(sd, "_model", None)
        if inner is not None and not inner.model:
            inner.model = None
            raise RuntimeError("stable-diffusion.cpp refused the model: new_sd_ctx returned NULL")
        rss_loaded = rss_now()
        for side in args.sides:
            mark = cap.mark()
            t1 = time.perf_counter()
            images = sd.generate_image(
                prompt=args.prompt,
                width=side,
                height=side,
                cfg_scale=1.0,
                guidance=3.5,
                sample_method="euler",
                sample_steps=args.steps,
                seed=args.seed,
            )
            wall = time.perf_counter() - t1
            time.sleep(0.05)  # lets the fd-2 reader catch up
            res = side_result(cap, mark, args.steps, wall)
            if images:
                path = os.path.join(args.out, f"sdcpp_{side}x{side}_{args.steps}step.png")
                images[0].save(path)
                res["image"] = path
            else:
                res["image"] = None
            res.update(rss_now())
            results[str(side)] = res
            log(f"{side}x{side}: {json.dumps(res)}")
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        error = f"{type(e).__name__}: {e}"
        log(error)
        load_s = locals().get("load_s")
        rss_loaded = locals().get("rss_loaded")
    finally:
        time.sleep(0.05)
        cap.stop_fd2()

    texts = [t for _, t in cap.lines]
    repacked = [m.groups() for m in (REPACK.search(t) for t in texts) if m]
    repack_buffer = [t.strip() for t in texts if "CPU_REPACK" in t]
    errors = [t.strip() for t in texts if re.search(r"\[ERROR|\[WARN|failed", t)]
    return {
        "tool": "stable-diffusion.cpp",
        "binding_version": getattr(sdc, "__version__", None),
        "sd_version": lib.sd_version().decode(),
        "threads": args.threads,
        "steps": args.steps,
        "seed": args.seed,
        "prompt": args.prompt,
        "files": {"flux": args.flux, "clip_l": args.clip_l, "t5": args.t5, "vae": args.vae},
        "cpu_features": feats,
        "avx512": feature_flags(feats).get("AVX512"),
        "avx512_vnni": feature_flags(feats).get("AVX512_VNNI"),
        "repacked": bool(repacked),
        "repacked_tensors": len(repacked),
        "repack_types": sorted({r[1] for r in repacked}),
        "repack_buffer_lines": repack_buffer[:4],
        "load_s": round(load_s, 4) if load_s is not None else None,
        "rss_after_load": rss_loaded,
        "sides": results,
        "peak_rss_kib": vm_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "error": error,
        "log_errors": errors[:10] if error else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flux", help="FLUX.1-schnell GGUF (diffusion model)")
    ap.add_argument("--clip-l", help="CLIP-L text encoder (safetensors)")
    ap.add_argument("--t5", help="T5-XXL encoder GGUF")
    ap.add_argument("--vae", help="ae.safetensors")
    ap.add_argument("--sides", default="256,512", help="image sides, comma-separated (default 256,512)")
    ap.add_argument("--steps", type=int, default=1, help="sampling steps (default 1; schnell uses up to 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompt", default="a photo of a red fox in the snow, golden hour")
    ap.add_argument("--out", default="sdcpp-out", help="folder for the PNGs")
    ap.add_argument("--parse-log", metavar="FILE", help="only parse a saved log and print what it found")
    args = ap.parse_args()

    if args.parse_log:
        with open(args.parse_log, errors="replace") as f:
            text = f.read()
        lines = re.split(r"[\r\n]+", text)
        got = parse_log(lines)
        got.pop("_sampling_start_t", None)
        got.pop("_sampling_end_t", None)
        got["cpu_features"] = features_line(text)
        got["repacked_tensors"] = sum(1 for t in lines if REPACK.search(t))
        print(json.dumps(got))
        return 0

    missing = [n for n in ("flux", "clip_l", "t5", "vae") if not getattr(args, n)]
    if missing:
        ap.error("missing: " + ", ".join("--" + n.replace("_", "-") for n in missing))
    for n in ("flux", "clip_l", "t5", "vae"):
        if not os.path.isfile(getattr(args, n)):
            ap.error(f"--{n.replace('_', '-')}: no such file: {getattr(args, n)}")
    try:
        args.sides = [int(s) for s in args.sides.split(",") if s.strip()]
    except ValueError:
        ap.error("--sides: comma-separated integers, e.g. 256,512")
    if not args.sides or any(s <= 0 or s % 16 for s in args.sides):
        ap.error("--sides: positive multiples of 16")
    if args.steps < 1:
        ap.error("--steps: at least 1")

    report = run(args)
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
    return 0 if report["error"] is None and report["sides"] else 1


if __name__ == "__main__":
    sys.exit(main())
