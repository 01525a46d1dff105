#!/usr/bin/env python3
"""schnell against diffusers' FluxPipeline on one machine, on random weights.

Run by scripts/gpu-bench.sh, which writes the models and the offline cache.
Standard library only, but for the `diffusers` subcommand (torch, diffusers,
transformers, tokenizers, safetensors, numpy, pillow), which runs in its own
process so that each side's memory is measured alone.

  gpu_bench.py run --bin schnell --models DIR --cache DIR --out DIR ...
      serves each configuration with `schnell serve`, sends it the same
      requests, runs diffusers on the same weights and initial noise, and
      writes results.json and results.md (timings, peak memory, PSNR).
  gpu_bench.py diffusers --models DIR --noise FILE --out PNG ...
      one FluxPipeline run (after a warm-up); prints its timings as JSON.
"""

import argparse
import base64
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

FLUX = "black-forest-labs/FLUX.1-schnell"
CLIP = "openai/clip-vit-large-patch14"
T5_TOKENS = 256  # schnell's T5 length (src/tokens.rs)
CLIP_TOKENS = 77


class PeakMemory:
    """The highest memory in use while it runs: the GPU's (nvidia-smi, all
    processes, less what was in use at the start) or a process's peak RSS."""

    def __init__(self, device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None
        self._base = 0

    @staticmethod
    def _gpu_used():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, check=True,
        ).stdout
        return int(out.strip().splitlines()[0]) * 1024 * 1024

    def __enter__(self):
        if self.device == "cuda":
            self._base = self._gpu_used()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._gpu_used() - self._base)

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._gpu_used() - self._base)

    def add_process(self, pid):
        """On the CPU: a live process's peak RSS (VmHWM)."""
        if self.device != "cuda":
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def restart(self, pid):
        """A new window, for one request: from what is in use now (the
        loaded model stays counted; the last request's peak does not)."""
        if self.device == "cuda":
            self.peak = self._gpu_used() - self._base
        else:
            # Resets the process's VmHWM to its current RSS.
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            self.peak = 0


def http_json(url, body=None, timeout=3600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def serve_config(args, name, extra, sizes, warm_up, extra_env=None):
    """One `schnell serve` process: waits until ready, optionally warms up at
    256² with one step, then one request per size. Returns its rows; the
    images go to --out as schnell-<name>-<side>.png."""
    port = args.port
    cmd = [args.bin, "serve", "--addr", f"127.0.0.1:{port}", "--device", args.device_flag] + extra
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=args.cache, **(extra_env or {}))
    log = open(os.path.join(args.out, f"serve-{name}.log"), "w")
    print(f"== schnell {name}: {' '.join(cmd[1:])}", flush=True)
    rows = []
    with PeakMemory(args.device) as mem:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            start = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"schnell serve ({name}) exited with {proc.returncode}: see {log.name}")
                try:
                    code, status = http_json(f"http://127.0.0.1:{port}/readyz", timeout=5)
                except (urllib.error.URLError, ConnectionError):
                    code, status = 0, {}
                if status.get("ready"):
                    break
                if status.get("error"):
                    raise SystemExit(f"schnell serve ({name}) failed to start: {status['error']}")
                time.sleep(0.5)
            ready_s = time.monotonic() - start
            print(f"   ready in {ready_s:.1f} s; weights: {status.get('weights')}", flush=True)
            plan = ([(256, 1, "warm-up")] if warm_up else []) + [(s, args.steps, "measured") for s in sizes]
            for side, steps, kind in plan:
                mem.restart(proc.pid)
                t = time.monotonic()
                code, body = http_json(
                    f"http://127.0.0.1:{port}/v1/images/generations",
                    {"prompt": args.prompt, "size": f"{side}x{side}", "steps": steps,
                     "seed": args.seed, "response_format": "b64_json"},
                )
                wall = time.monotonic() - t
                if code != 200:
                    raise SystemExit(f"schnell {name} at {side}²: HTTP {code}: {body}")
                timings = body["data"][0]["timings"]
                print(f"   {kind} {side}² × {steps}: {wall:.2f} s, steps {timings['steps_ms']} ms, "
                      f"VAE {timings['vae_decode_ms']} ms", flush=True)
                if kind == "warm-up":
                    continue
                with open(os.path.join(args.out, f"schnell-{name}-{side}.png"), "wb") as f:
                    f.write(base64.b64decode(body["data"][0]["b64_json"]))
                mem.add_process(proc.pid)
                rows.append({"impl": "schnell", "config": name, "side": side, "steps": steps,
                             "ready_s": round(ready_s, 2), "wall_s": round(wall, 3), **timings,
                             "peak_memory_bytes": mem.peak})
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows


def run_diffusers(args, noise, side):
    png = os.path.join(args.out, f"diffusers-{args.dtype}-{side}.png")
    cmd = [sys.executable, __file__, "diffusers", "--models", args.models, "--noise", noise,
           "--side", str(side), "--steps", str(args.steps), "--prompt", args.prompt,
           "--device", args.device, "--dtype", args.dtype, "--out", png]
    print(f"== diffusers {args.dtype} {side}²", flush=True)
    with PeakMemory(args.device) as mem:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the diffusers run failed ({proc.returncode})")
    row = json.loads(out.strip().splitlines()[-1])
    if args.device != "cuda":
        mem.peak = row.pop("peak_rss_bytes")
    print(f"   steps {row['steps_ms']} ms, VAE {row['vae_decode_ms']} ms", flush=True)
    row.update(impl="diffusers", config=args.dtype, side=side, steps=args.steps, peak_memory_bytes=mem.peak)
    return row


def psnr(a_png, b_png):
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_png).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(b_png).convert("RGB"), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def cmd_run(args):
    """Runs the configurations asked for, in order, adding their rows to the
    results already in --out (runs can be split, e.g. one per set of weights
    on disk)."""
    os.makedirs(args.out, exist_ok=True)
    args.device_flag = "cuda:0" if args.device == "cuda" else "cpu"
    side, big = args.side, args.big_side
    sizes = [side, big] if big else [side]
    results_path = os.path.join(args.out, "results.json")
    rows = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            rows = json.load(f)["rows"]

    def keep(new_rows):
        done = {(r["impl"], r["config"], r["side"]) for r in new_rows}
        rows[:] = [r for r in rows if (r["impl"], r["config"], r["side"]) not in done] + new_rows
        report(args, rows, sizes)

    for name in args.configs:
        if name == "bf16":
            keep(serve_config(args, name, ["--dtype", "bf16", "--quant", "none"], sizes, True))
        elif name == "f32" and args.dtype == "f32":
            # The main runs are f32 already (a CPU rehearsal): run them as such.
            keep(serve_config(args, name, ["--dtype", "f32", "--quant", "none"], sizes, True))
        elif name == "f32":
            # Precision, not speed: no warm-up. Resident, it needs about 85 GB
            # at 2048² (48 GB of F32 transformer, 19 GB of T5).
            keep(serve_config(args, name, ["--dtype", "f32", "--quant", "none"], sizes, False))
        elif name == "diffusers":
            noise = os.path.join(args.out, f"noise-{side}.safetensors")
            subprocess.run([args.bin, "dev", "noise", noise, "--seed", str(args.seed),
                            "--width", str(side), "--height", str(side)], check=True)
            keep([run_diffusers(args, noise, side)])
        else:  # a GGUF type; CLIP and the VAE run in --dtype
            # `q4_0+dequantize`: its layers dequantized to bf16 per product
            # and multiplied by cuBLAS, against candle's quantized kernels.
            quant, _, product = name.partition("+")
            env = {"SCHNELL_GGUF_GPU_PRODUCT": product} if product else {}
            keep(serve_config(args, name, ["--dtype", args.dtype, "--quant", quant], [side], True, env))


def report(args, rows, sizes):
    """results.json and results.md from every row so far (rewritten after
    each configuration, so a run cut short still leaves its figures)."""
    side = args.side
    results_path = os.path.join(args.out, "results.json")

    def png(impl, config, s):
        path = os.path.join(args.out, f"{impl}-{config}-{s}.png")
        return path if os.path.exists(path) else None

    comparisons = []

    def compare(what, a, b):
        if a and b:
            comparisons.append({"what": what, "psnr_db": round(psnr(a, b), 2)})

    main = args.dtype
    compare(f"schnell {main} vs diffusers {main}, {side}²", png("schnell", main, side),
            png("diffusers", main, side))
    if main != "f32":
        for s in sizes:
            compare(f"schnell {main} vs schnell f32, {s}²", png("schnell", main, s), png("schnell", "f32", s))
    for r in rows:
        if r["impl"] == "schnell" and r["config"] not in ("bf16", "f32"):
            compare(f"schnell {r['config']} vs schnell {main}, {r['side']}²",
                    png("schnell", r["config"], r["side"]), png("schnell", main, r["side"]))

    with open(results_path, "w") as f:
        json.dump({"rows": rows, "comparisons": comparisons}, f, indent=2)
    lines = [
        f"{args.steps} steps, seed {args.seed}, prompt {args.prompt!r}, device {args.device}; "
        "random weights (images are noise). Peak memory: the GPU's, less what was in use "
        "before the process started (on a CPU: the process's peak RSS).", "",
        "| implementation | weights | size | per step (median) | steps | VAE decode | text encoding | total | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['impl']} | {r['config']} | {r['side']}² | {median(r['steps_ms']):.0f} ms | "
            f"{', '.join(str(s) for s in r['steps_ms'])} ms | {r['vae_decode_ms']} ms | "
            f"{r['text_encoding_ms']} ms | {r['total_ms']} ms | {r['peak_memory_bytes'] / 1e9:.2f} GB |")
    ours = next((r for r in rows if (r["impl"], r["config"], r["side"]) == ("schnell", main, side)), None)
    peer = next((r for r in rows if r["impl"] == "diffusers" and r["side"] == side), None)
    if ours and peer:
        lines += ["", f"Time ratio at {side}², schnell / diffusers: per step "
                  f"{median(ours['steps_ms']) / median(peer['steps_ms']):.2f}×, denoise + decode "
                  f"{(sum(ours['steps_ms']) + ours['vae_decode_ms']) / (sum(peer['steps_ms']) + peer['vae_decode_ms']):.2f}×."]
    lines += ["", "| images compared | PSNR |", "|---|---|"]
    lines += [f"| {c['what']} | {c['psnr_db']} dB |" for c in comparisons]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def load_transformer(flux, dtype):
    """BFL's single file through diffusers' own key conversion. That converter
    takes the width to be FLUX's real 3072; the smaller random models (the
    CPU rehearsal) need their own, so it is run with the file's width."""
    import inspect

    import diffusers.loaders.single_file_utils as single_file
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    checkpoint = load_file(os.path.join(flux, "flux1-schnell.safetensors"))
    width = checkpoint["img_in.weight"].shape[0]
    convert = single_file.convert_flux_transformer_checkpoint_to_diffusers
    if width != 3072:
        source = inspect.getsource(convert).replace("inner_dim = 3072", f"inner_dim = {width}")
        scope = dict(vars(single_file))
        exec(source, scope)
        convert = scope[convert.__name__]
    with open(os.path.join(flux, "transformer", "config.json")) as f:
        config = json.load(f)
    # Built directly in `dtype`: at real size an F32 model would take 48 GB of
    # host memory beside the 24 GB checkpoint.
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = FluxTransformer2DModel.from_config(config)
    finally:
        torch.set_default_dtype(default)
    converted = convert(checkpoint)
    del checkpoint
    missing, unexpected = model.load_state_dict(converted, strict=False)
    del converted
    if missing or unexpected:
        raise SystemExit(f"transformer keys: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype)


def load_vae(flux, dtype):
    """BFL's single-file autoencoder, with the FLUX repo's vae/config.json."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_single_file(
        os.path.join(flux, "ae.safetensors"), config=flux, subfolder="vae",
        torch_dtype=dtype, local_files_only=True)


def cmd_diffusers(args):
    """FluxPipeline from the same files schnell loads: BFL's single-file
    transformer and autoencoder, the FLUX repo's text encoders, schnell's
    tokenizer files and padding, and schnell's initial noise."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import CLIPTextModel, T5EncoderModel

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    flux = os.path.join(args.models, FLUX)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    transformer = load_transformer(flux, dtype)
    vae = load_vae(flux, dtype)
    clip = CLIPTextModel.from_pretrained(os.path.join(flux, "text_encoder"), torch_dtype=dtype).to(device)
    t5 = T5EncoderModel.from_pretrained(os.path.join(flux, "text_encoder_2"), torch_dtype=dtype).to(device)
    # schnell's scheduler: no resolution shift.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer).to(device)

    def ids(path, length, pad):
        tok = Tokenizer.from_file(path)
        tok.no_padding()
        tok.no_truncation()
        got = tok.encode(args.prompt).ids
        if len(got) > length:
            raise SystemExit(f"the prompt is longer than {length} tokens: use a shorter one")
        return torch.tensor([got + [pad] * (length - len(got))], device=device), len(got)

    def encode():
        t5_tok = Tokenizer.from_file(os.path.join(flux, "tokenizer_2", "tokenizer.json"))
        t5_ids, _ = ids(os.path.join(flux, "tokenizer_2", "tokenizer.json"), T5_TOKENS,
                        t5_tok.token_to_id("<pad>"))
        clip_tok_path = os.path.join(args.models, CLIP, "tokenizer.json")
        end = Tokenizer.from_file(clip_tok_path).token_to_id("<|endoftext|>")
        clip_ids, n = ids(clip_tok_path, CLIP_TOKENS, end)
        with torch.no_grad():
            prompt_embeds = t5(t5_ids).last_hidden_state.to(dtype)
            # CLIPTextModel's pooled vector: the final hidden state at the
            # first end token, where schnell reads it too.
            pooled = clip(clip_ids).last_hidden_state[:, n - 1]
        return prompt_embeds, pooled.to(dtype)

    noise = load_file(args.noise)["noise"]  # (1, 16, H/8, W/8)
    b, c, h, w = noise.shape
    latents = noise.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    latents = latents.to(device, dtype)

    def run(side, steps, latents):
        marks = []

        def on_step(pipe, i, t, kw):
            sync()
            marks.append(time.perf_counter())
            return kw

        sync()
        t0 = time.perf_counter()
        prompt_embeds, pooled = encode()
        sync()
        t1 = time.perf_counter()
        image = pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, latents=latents,
                     height=side, width=side, num_inference_steps=steps, guidance_scale=0.0,
                     max_sequence_length=T5_TOKENS, output_type="np",
                     callback_on_step_end=on_step).images[0]
        sync()
        t2 = time.perf_counter()
        starts = [t1] + marks[:-1]
        return image, {
            "text_encoding_ms": round((t1 - t0) * 1e3),
            "steps_ms": [round((e - s) * 1e3) for s, e in zip(starts, marks)],
            "vae_decode_ms": round((t2 - marks[-1]) * 1e3),
            "total_ms": round((t2 - t0) * 1e3),
        }

    warm = torch.randn((1, 256, 64), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    run(256, 1, warm)
    image, timings = run(args.side, args.steps, latents)
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(args.out)
    import resource

    timings["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(timings), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--models", required=True, help="the folder `schnell dev random-models` wrote")
    r.add_argument("--cache", required=True, help="an HF cache whose snapshots point into --models")
    r.add_argument("--out", required=True)
    r.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    r.add_argument("--side", type=int, default=1024)
    r.add_argument("--big-side", type=int, default=2048, help="0: none")
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--dtype", choices=["bf16", "f32"], default="bf16",
                   help="of the main runs and diffusers' (f32 on a CPU: candle has no bf16 convolution there)")
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--configs", default="bf16,q8_0,q4_0,f32,diffusers",
                   type=lambda s: [c for c in s.split(",") if c],
                   help="bf16, f32, diffusers, a GGUF type (q8_0, q4_0, ...), or TYPE+dequantize "
                        "(its layers dequantized to bf16 per product on the GPU)")
    r.add_argument("--prompt", default="a photo of a red fox in the snow, golden hour")
    r.add_argument("--port", type=int, default=8191)
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("diffusers")
    d.add_argument("--models", required=True)
    d.add_argument("--noise", required=True)
    d.add_argument("--side", type=int, required=True)
    d.add_argument("--steps", type=int, default=4)
    d.add_argument("--prompt", required=True)
    d.add_argument("--device", default="cuda")
    d.add_argument("--dtype", default="bf16")
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_diffusers)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
