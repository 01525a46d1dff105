"""Memory over many requests: `schnell serve` on tiny random-weight models
(noise, not FLUX), thousands of requests with distinct prompts, sizes, `n`,
formats, streams and edits, and its resident memory (RSS) sampled as they go.

    python soak.py path/to/schnell [--requests 1000] [--csv curve.csv]

RSS is sampled between batches of requests, with none in flight: what the
server keeps, beside what its two bounded stores hold by `/metrics` (URL images
in memory, at most 256 images and 256 MiB; the prompt cache, at most 64 MiB).
Passes when RSS after the second half is within 5% of RSS after the first (the
image store is full by then, with 70% of requests asking for URLs), and the
rest's median in the second half within 5% of the first half's: memory levels
off instead of growing with the requests served. Prints the curve.
"""

import argparse
import json
import os
import random
import statistics
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

from harness import Checks, Schnell, work_dir

WORDS = ("fox heron lantern harbour moss glacier copper violin orchard comet "
         "meadow lighthouse saffron canyon velvet ember tundra falcon quartz willow").split()
SIZES = [16 * k for k in range(16, 33)]  # 256 to 512 a side


def png(width: int, height: int, seed: int) -> bytes:
    """An RGBA PNG of noise, from the standard library alone."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rng.getrandbits(8) for _ in range(width * 4)) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def hwm_mb(pid: int) -> float:
    return status_mb(pid, "VmHWM")


ERRORS = {}


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        ERRORS.setdefault(e.code, e.read()[:300])
        return e.code


def multipart(fields: dict, image: bytes) -> tuple:
    boundary = "soak-boundary-7f3a"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def one(url: str, i: int) -> int:
    """Request `i`: its own prompt, size, `n`, format and kind."""
    rng = random.Random(i)
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + f" #{i}"
    width, height = rng.choice(SIZES), rng.choice(SIZES)
    fields = {"prompt": prompt, "size": f"{width}x{height}", "steps": rng.randint(1, 2), "seed": i,
              "n": rng.choice([1, 1, 1, 2, 3]),
              # Mostly URLs, so that the image store is full by half-way.
              "response_format": "url" if rng.random() < 0.7 else "b64_json",
              "output_format": rng.choice(["png", "jpeg", "webp"]),
              "stream": rng.random() < 0.2}
    if fields["stream"]:
        fields["n"] = 1  # a stream makes one image
    if rng.random() < 0.2:
        body, content_type = multipart({k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()},
                                       png(rng.randrange(64, 600), rng.randrange(64, 600), i))
        return post(f"{url}/v1/images/edits", body, content_type)
    return post(f"{url}/v1/images/generations", json.dumps(fields).encode(), "application/json")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("schnell")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--csv")
    args = parser.parse_args()
    work = work_dir("schnell-soak-")
    check = Checks("soak")
    with Schnell(args.schnell) as run:
        run.run("dev", "tiny-models", str(work / "models"), check=True)
        _, mirror = run.serve_url("mirror", "--dir", str(work / "models"), "--addr", "127.0.0.1:0")
        env = dict(os.environ, HF_HUB_CACHE=str(work / "cache"), HF_ENDPOINT=mirror)
        env.pop("HF_HUB_OFFLINE", None)
        server, url = run.serve_url("serve", "--addr", "127.0.0.1:0", "--quant", "none",
                                    "--max-queue", str(args.clients * 2), env=env)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline:
                check("the server became ready", False)
                return check.summary()
            time.sleep(0.2)

        # RSS between batches, with no request in flight: what stays; and
        # what the server says its two bounded stores hold.
        def sample(n: int) -> tuple:
            rss = rss_mb(server.pid)
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
                metrics = r.read().decode()
            stores = sum(float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith(("schnell_stored_images_bytes ", "schnell_prompt_cache_bytes ")))
            return (n, rss, stores / 2**20)

        curve = [sample(0)]
        statuses = {}
        lock = threading.Lock()
        batch = max(args.requests // 40, 1)
        started = time.time()

        def task(i: int) -> None:
            status = one(url, i)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        with ThreadPoolExecutor(args.clients) as pool:
            for first in range(0, args.requests, batch):
                list(pool.map(task, range(first, min(first + batch, args.requests))))
                curve.append(sample(min(first + batch, args.requests)))
        elapsed = time.time() - started
        peak = hwm_mb(server.pid)

    print(f"{args.requests} requests in {elapsed:.0f} s ({args.clients} clients); answers: {statuses}")
    print("requests  RSS MB  stores MB  the rest MB")
    for n, mb, stores in curve:
        print(f"{n:8d}  {mb:6.1f}  {stores:9.1f}  {mb - stores:11.1f}")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("requests,rss_mb,stores_mb\n" + "".join(f"{n},{mb:.1f},{st:.1f}\n" for n, mb, st in curve))
    print(f"peak RSS (VmHWM): {peak:.1f} MB")
    half = args.requests // 2
    firsts = [(mb, st) for n, mb, st in curve if 0 < n <= half]
    seconds = [(mb, st) for n, mb, st in curve if n > half]
    rest = lambda part: statistics.median(mb - st for mb, st in part)
    check("every request answered 200", set(statuses) == {200}, f"{statuses}, e.g. {ERRORS}")
    end, middle = seconds[-1][0], firsts[-1][0]
    check(f"RSS levels off: {end:.1f} MB after the second half, within 5% of {middle:.1f} MB after the first",
          end <= middle * 1.05, f"{end:.1f} > {middle:.1f}")
    check(f"memory besides the bounded stores levels off: median {rest(seconds):.1f} MB in the second half, "
          f"within 5% of {rest(firsts):.1f} MB in the first", rest(seconds) <= rest(firsts) * 1.05)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
