#!/usr/bin/env python3
"""schnell and stable-diffusion.cpp side by side on the CPU, on the same
real-size random-weight GGUF files (their images are noise).

For each transformer type and image side, one run of each, one after the
other, each in a process of its own:
  - schnell: `schnell generate --quant TYPE` offline from the cache that
    `scripts/bench_quant_real.sh` fills (PREPARE_ONLY=1 QUANTS="...");
    its stage times from its `timings:` line, its peak RSS from GNU time;
  - stable-diffusion.cpp: `scripts/sdcpp_bench.py` (its venv: see there) on
    the same transformer file, the same T5 GGUF (the one schnell picks for
    the type), the FLUX repo's CLIP-L and `ae.safetensors`: its stage times
    from its own log, its peak RSS from /proc.
Both use `--threads` threads (default 2). Per step is the sampling time over
the steps; the whole image is text encoding + 4 steps + VAE decode, from the
same run's stages (loading excluded on both sides).

  python3 scripts/bench_vs_sdcpp.py --quants q4_0,q8_0,q4_k_s --sides 256,512

Progress goes to stderr; stdout gets a Markdown table, then one JSON line.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a red fox in the snow"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def snapshot_file(cache, repo, name):
    pattern = os.path.join(cache, "models--" + repo.replace("/", "--"), "snapshots", "*", name)
    found = glob.glob(pattern)
    if not found:
        sys.exit(f"{repo}/{name} is not in {cache}: run PREPARE_ONLY=1 scripts/bench_quant_real.sh first")
    return os.path.realpath(found[0])


def ms(line, label):
    m = re.search(label + r" (\d+) ms", line)
    return int(m.group(1)) / 1000 if m else None


def run_schnell(binary, cache, quant, side, steps, threads, out):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, RAYON_NUM_THREADS=str(threads))
    cmd = ["/usr/bin/time", "-v", binary, "generate", PROMPT, "--width", str(side), "--height", str(side),
           "--steps", str(steps), "--seed", "1", "--quant", quant, "-o", out]
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - started
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"schnell failed:\n{text[-3000:]}")
    timings = next(l for l in text.splitlines() if l.startswith("timings:"))
    weights = next((l for l in text.splitlines() if l.startswith("weights:")), "")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    sampling = ms(timings, r"\d+ steps")
    return {
        "load_s": ms(timings, "load"),
        "text_encoding_s": ms(timings, "text encoding"),
        "step_s": sampling / steps,
        "vae_decode_s": ms(timings, "VAE decode"),
        "wall_s": wall,
        "peak_rss_gb": rss_kb * 1024 / 1e9,
        "weights": weights,
    }


def run_sdcpp(python, files, side, steps, threads, out):
    cmd = [python, os.path.join(ROOT, "scripts", "sdcpp_bench.py"), "--flux", files["flux"],
           "--clip-l", files["clip_l"], "--t5", files["t5"], "--vae", files["vae"],
           "--sides", str(side), "--steps", str(steps), "--threads", str(threads), "--out", out,
           "--prompt", PROMPT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"stable-diffusion.cpp failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    report = json.loads(lines[-1])
    side_report = report["sides"][str(side)]
    return {
        "load_s": report.get("load_s"),
        "text_encoding_s": side_report["text_encoding_s"],
        "step_s": side_report["sampling_s"] / steps,
        "vae_decode_s": side_report["vae_decode_s"],
        "peak_rss_gb": report["peak_rss_kib"] * 1024 / 1e9,
        "cpu": report.get("cpu_features"),
        "repacked": report.get("repacked"),
    }


def image(r):
    return r["text_encoding_s"] + 4 * r["step_s"] + r["vae_decode_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quants", default="q4_0,q8_0,q4_k_s")
    p.add_argument("--sides", default="256,512")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/schnell-bench-real/cache"))
    p.add_argument("--schnell", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/schnell-bench-target")), "release", "schnell"))
    p.add_argument("--sdcpp-python", default=os.path.expanduser("~/.cache/sdcpp-venv/bin/python"))
    p.add_argument("--out", default="/tmp/bench-vs-sdcpp")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    flux_repo = "black-forest-labs/FLUX.1-schnell"
    results = []
    for quant in args.quants.split(","):
        for side in map(int, args.sides.split(",")):
            log(f"== {quant} {side}²: schnell")
            ours = run_schnell(args.schnell, args.cache, quant, side, args.steps, args.threads,
                               os.path.join(args.out, f"schnell-{quant}-{side}.png"))
            # The T5 file schnell chose for this type, named in its `weights:` line.
            t5_type = re.search(r"\(T5 (\S+)\)", ours["weights"]).group(1)
            files = {
                "flux": snapshot_file(args.cache, "city96/FLUX.1-schnell-gguf", f"flux1-schnell-{quant.upper()}.gguf"),
                "t5": snapshot_file(args.cache, "city96/t5-v1_1-xxl-encoder-gguf",
                                    f"t5-v1_1-xxl-encoder-{t5_type.upper()}.gguf"),
                "clip_l": snapshot_file(args.cache, flux_repo, "text_encoder/model.safetensors"),
                "vae": snapshot_file(args.cache, flux_repo, "ae.safetensors"),
            }
            log(f"   {ours}")
            log(f"== {quant} {side}²: stable-diffusion.cpp (T5 {t5_type})")
            theirs = run_sdcpp(args.sdcpp_python, files, side, args.steps, args.threads, args.out)
            log(f"   {theirs}")
            results.append({"quant": quant, "t5": t5_type, "side": side, "steps": args.steps,
                            "schnell": ours, "sdcpp": theirs})
    print("| type | side | | T5+CLIP | per step | VAE | image (4 steps) | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for who in ("schnell", "sdcpp"):
            x = r[who]
            name = "schnell" if who == "schnell" else "stable-diffusion.cpp"
            print(f"| {r['quant']} (T5 {r['t5']}) | {r['side']}² | {name} | {x['text_encoding_s']:.1f} s "
                  f"| {x['step_s']:.1f} s | {x['vae_decode_s']:.1f} s | {image(x):.1f} s | {x['peak_rss_gb']:.2f} GB |")
        a, b = r["schnell"], r["sdcpp"]
        print(f"| | | ratio | {a['text_encoding_s'] / b['text_encoding_s']:.2f} | {a['step_s'] / b['step_s']:.2f} "
              f"| {a['vae_decode_s'] / b['vae_decode_s']:.2f} | {image(a) / image(b):.2f} "
              f"| {a['peak_rss_gb'] / b['peak_rss_gb']:.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
