#!/usr/bin/env python3
"""diffusers' FLUX modules timed on the CPU, as the peer of schnell's
`cargo bench --bench flux_cpu`: one transformer step and one VAE decode per
image side, on the random-weight files of
`schnell dev random-models DIR --size bench --quant none`.

Run through scripts/cpu-peer-bench.sh (which makes the venv), or directly:

  cpu_peer_bench.py --models DIR --sides 256,512 --runs 3 --threads 2

Progress goes to stderr; the last line of stdout is one JSON object: per
side, every run's time in seconds (step_s, vae_s), their medians, and per
run the cores other processes kept busy (*_other_cores: on a shared machine
anything above cores - threads makes the times meaningless, and a warning
says so); then the process's peak RSS in KiB, loading included, as schnell's
bench reports it, and beside it the RSS once loaded and the peak while
measuring only.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

# The loaders are gpu_bench.py's, so that both benchmarks read the files the
# same way (its module level is standard library only).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import FLUX, T5_TOKENS, load_transformer, load_vae  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def vm_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: now; VmHWM: the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss():
    """Starts VmHWM again from the current RSS, so that the peak of the
    measurements is told apart from the loading's transients. False where
    the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def busy_cpu_s():
    """CPU seconds the whole machine has spent busy since boot (/proc/stat:
    user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn, runs):
    """One warm-up call (first-call allocations, oneDNN's kernel choice), then
    `runs` timed calls. Returns their times in seconds and, per call, how many
    cores other processes kept busy meanwhile: the machine is shared, and with
    its threads short of cores OpenMP's barriers wait on the descheduled ones,
    so a step can take several times as long."""
    fn()
    times, others = [], []
    for _ in range(runs):
        busy, own, start = busy_cpu_s(), time.process_time(), time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        times.append(wall)
        others.append(round(max(busy_cpu_s() - busy - (time.process_time() - own), 0) / wall, 2))
    return times, others


def measure(row, key, what, fn, runs, threads):
    """Times `fn` into row[key + "_s"], its median and the other load."""
    times, others = timed(fn, runs)
    row[key + "_s"] = times
    row[key + "_median_s"] = statistics.median(times)
    row[key + "_other_cores"] = others
    log(f"{row['side']}² {what}: median {row[key + '_median_s']:.3f} s, runs "
        f"{', '.join(f'{x:.3f}' for x in times)}")
    if max(others) + threads > os.cpu_count() + 0.25:
        log(f"  warning: other processes kept up to {max(others)} of {os.cpu_count()} cores busy: "
            "these times are not clean")


def step_inputs(torch, config, side, seed):
    """What FluxPipeline hands the transformer at side×side on its first
    schnell step: packed latents ((side/16)² tokens of 2×2×16 channels), the
    T5 and pooled CLIP embeddings, and the position ids it makes."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    grid = side // 16  # the latent side (side/8) after 2×2 packing
    return dict(
        hidden_states=torch.randn((1, grid * grid, config.in_channels), generator=g),
        encoder_hidden_states=torch.randn((1, T5_TOKENS, config.joint_attention_dim), generator=g),
        pooled_projections=torch.randn((1, config.pooled_projection_dim), generator=g),
        # The pipeline passes t / 1000; schnell's first step is t = 1000.
        timestep=torch.tensor([1.0]),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, grid, grid, "cpu", torch.float32),
        txt_ids=torch.zeros(T5_TOKENS, 3),
        guidance=None,  # schnell is not guidance-distilled
        return_dict=False,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="the folder `schnell dev random-models` wrote")
    p.add_argument("--sides", default="256,512", type=lambda s: [int(x) for x in s.split(",") if x],
                   help="image sides in pixels, comma-separated (multiples of 16)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement, after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch's intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--steps-only", action="store_true", help="the transformer alone (its peak RSS alone)")
    only.add_argument("--vae-only", action="store_true", help="the VAE alone")
    args = p.parse_args()
    if any(s % 16 for s in args.sides):
        p.error("every side must be a multiple of 16")

    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    flux = os.path.join(args.models, FLUX)
    dtype = torch.float32
    # Only what is measured is loaded, so that peak RSS is that module's.
    transformer = vae = None
    if not args.vae_only:
        t = time.perf_counter()
        transformer = load_transformer(flux, dtype).eval()
        log(f"transformer loaded in {time.perf_counter() - t:.1f} s "
            f"({sum(x.numel() for x in transformer.parameters()) / 1e6:.0f} M parameters)")
    if not args.steps_only:
        t = time.perf_counter()
        vae = load_vae(flux, dtype).eval()
        log(f"VAE loaded in {time.perf_counter() - t:.1f} s")

    rss_loaded = vm_kib("VmRSS")
    # Resetting VmHWM resets ru_maxrss too: the loading's peak is kept here.
    peak_loading = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_reset = reset_peak_rss()
    results = []
    with torch.inference_mode():
        for side in args.sides:
            row = {"side": side}
            if transformer is not None:
                inputs = step_inputs(torch, transformer.config, side, args.seed)
                measure(row, "step", "step", lambda: transformer(**inputs), args.runs, args.threads)
            if vae is not None:
                # The unpacked latents the pipeline decodes: 16 channels, side/8.
                z = torch.randn((1, vae.config.latent_channels, side // 8, side // 8),
                                generator=torch.Generator().manual_seed(args.seed))
                measure(row, "vae", "VAE decode", lambda: vae.decode(z, return_dict=False),
                        args.runs, args.threads)
            results.append(row)

    print(json.dumps({
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "results": results,
        # The whole process, loading included (ru_maxrss is in KiB on Linux),
        # as schnell's bench reports it; torch's libraries alone are ~0.5 GiB.
        "peak_rss_kib": max(peak_loading, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        # Once the weights were in, and the peak while measuring only.
        "loaded_rss_kib": rss_loaded,
        "measure_peak_rss_kib": vm_kib("VmHWM") if peak_reset else None,
    }), flush=True)


if __name__ == "__main__":
    main()
