"""Two `schnell serve` replicas behind nginx, set up as the README says.

Run by scripts/test.sh with the schnell binary's path:
    python nginx_replicas.py path/to/schnell
The replicas share one model cache (filled once by `schnell fetch`, then read
offline) and one `--image-dir`. A bounded load goes through nginx; one replica
is killed (SIGKILL) in the middle. Every request must end in 200 or a clean
429/503, and every image URL either replica made must resolve through nginx.
Tiny random-weight models (their images are noise) come from `schnell dev
tiny-models`, served by `schnell mirror`.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import Checks, Schnell, work_dir

REQUESTS = 12
CONCURRENCY = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz") as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


def post(url: str, body: dict):
    """(status, JSON body, the replica nginx used)."""
    req = urllib.request.Request(f"{url}/v1/images/generations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read()), r.headers.get("X-Upstream", "")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"unparsed": raw[:200].decode(errors="replace")}
        return e.code, parsed, e.headers.get("X-Upstream", "")


def nginx_config(work: Path, port: int, replicas: list) -> Path:
    """The README's configuration, with this test's ports and paths, and a
    header naming the replica that answered."""
    servers = "\n".join(f"    server {r.split('//')[1]} max_fails=3 fail_timeout=10s;" for r in replicas)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log {work}/nginx-access.log;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  upstream schnell {{
    least_conn;
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://schnell;
      proxy_set_header Host $host;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout 600s;
      proxy_next_upstream error timeout http_429 http_503 non_idempotent;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
""")
    return conf


def main(schnell: str) -> int:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = work_dir("schnell-nginx-")
    check = Checks("nginx and two replicas")
    port = free_port()
    lb = f"http://127.0.0.1:{port}"
    with Schnell(schnell) as run:
        run.run("dev", "tiny-models", str(work / "models"), check=True)
        mirror_proc, mirror = run.serve_url("mirror", "--dir", str(work / "models"), "--addr", "127.0.0.1:0")
        # Once, into the shared cache; the replicas then read it offline.
        fetched = run.run("fetch", "--model", "flux-schnell", "--quant", "none",
                          "--endpoint", mirror, "--cache-dir", str(work / "cache"))
        check("schnell fetch fills the shared cache", fetched.returncode == 0, fetched.stderr)
        mirror_proc.terminate()

        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(work / "cache"))
        replicas = []
        for _ in range(2):
            proc, url = run.serve_url("serve", "--addr", "127.0.0.1:0", "--quant", "none",
                                      "--max-queue", "8", "--image-dir", str(work / "images"),
                                      "--public-url", lb, env=env)
            replicas.append((proc, url))
        # Each becomes ready from the shared cache alone (wait_ready fails otherwise).
        for _, url in replicas:
            wait_ready(url)

        proxy = subprocess.Popen([nginx, "-p", str(work), "-c", str(nginx_config(work, port, [u for _, u in replicas]))],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(lb)
            done = []
            lock = threading.Lock()
            killed = threading.Event()

            def one(i: int):
                result = post(lb, {"prompt": f"fox {i}", "size": "256x256", "steps": 2, "seed": i,
                                   "response_format": "url"})
                with lock:
                    done.append(result)
                    # Half-way through, the first replica dies mid-load.
                    if len(done) == REQUESTS // 2 and not killed.is_set():
                        replicas[0][0].kill()
                        killed.set()
                return result

            with ThreadPoolExecutor(CONCURRENCY) as pool:
                results = list(pool.map(one, range(REQUESTS)))
            check("a replica was killed during the load", killed.is_set() and replicas[0][0].wait(10) is not None)

            clean = all(s == 200 or (s in (429, 503) and "error" in b) for s, b, _ in results)
            check(f"all {REQUESTS} requests end in 200 or a clean 429/503", clean,
                  str([(s, b) for s, b, _ in results if s != 200]))
            ok = [(b, up) for s, b, up in results if s == 200]
            check("most requests succeed despite the kill", len(ok) >= REQUESTS - 2, f"{len(ok)} of {REQUESTS}")
            dead = replicas[0][1].split("//")[1]
            log = (work / "nginx-error.log").read_text()
            check("nginx met the dead replica and passed its requests on",
                  dead in log and ("refused" in log or "prematurely closed" in log or "reset" in log), log[-500:])
            upstreams = {up.split(",")[-1].strip() for _, up in ok}
            check("both replicas made images", len(upstreams) == 2, str(upstreams))

            # Every image resolves through nginx, whichever replica made it,
            # though one of them is gone now.
            lost = []
            for body, up in ok:
                url = body["data"][0]["url"]
                if not url.startswith(lb):
                    lost.append(f"{url} does not name the balancer")
                    continue
                try:
                    with urllib.request.urlopen(url) as r:
                        if r.read(8) != b"\x89PNG\r\n\x1a\n":
                            lost.append(f"{url} (from {up}) is not a PNG")
                except urllib.error.HTTPError as e:
                    lost.append(f"{url} (from {up}): HTTP {e.code}")
            check("every image URL resolves through nginx", not lost, "; ".join(lost))
        finally:
            proxy.terminate()
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
            errors = proxy.stderr.read().decode(errors="replace")
            if errors.strip():
                print("nginx said:", errors[-2000:])
    return check.summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
