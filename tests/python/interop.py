"""Python `huggingface_hub` and schnell share one cache, both ways.

Run by scripts/test.sh with the schnell binary's path:
    python interop.py path/to/schnell
1. Python downloads from `schnell mirror`; schnell then reads that cache offline.
2. schnell downloads; Python then reads that cache with local_files_only=True.
"""

import os
import sys
from pathlib import Path

from harness import Checks, Schnell, work_dir


def main(schnell: str) -> int:
    work = work_dir("schnell-interop-")
    repo = work / "mirror" / "acme" / "tiny"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "config.json").write_text('{"hidden_size": 8}\n')
    (repo / "model.safetensors").write_bytes(os.urandom(300_000))

    with Schnell(schnell) as run:
        _, endpoint = run.serve_url("mirror", "--dir", str(work / "mirror"), "--addr", "127.0.0.1:0")
        # huggingface_hub reads its endpoint and offline flag at import time.
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        os.environ.pop("HF_HUB_OFFLINE", None)
        from huggingface_hub import hf_hub_download

        files = ["sub/config.json", "model.safetensors"]
        check = Checks("interop")

        # 1. Python writes, schnell reads offline (an unreachable endpoint too).
        py_cache = work / "py-cache"
        for f in files:
            hf_hub_download("acme/tiny", f, cache_dir=py_cache)
        out = run.run(
            "fetch", "--repo", "acme/tiny", "--file", *files,
            env={**os.environ, "HF_HUB_CACHE": str(py_cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
        )
        check("schnell reads a cache written by huggingface_hub", out.returncode == 0 and out.stdout.count("cached") == 2, out.stderr + out.stdout)

        # 2. schnell writes, Python reads without the network.
        rs_cache = work / "rs-cache"
        out = run.run("fetch", "--repo", "acme/tiny", "--file", *files,
                      env={**os.environ, "HF_HUB_CACHE": str(rs_cache)})
        check("schnell fetch from the mirror", out.returncode == 0, out.stderr)
        for f in files:
            try:
                path = hf_hub_download("acme/tiny", f, cache_dir=rs_cache, local_files_only=True)
                same = Path(path).read_bytes() == (repo / f).read_bytes()
                check(f"huggingface_hub reads {f} from schnell's cache", same, path)
            except Exception as e:  # noqa: BLE001 - report any failure as a test failure
                check(f"huggingface_hub reads {f} from schnell's cache", False, repr(e))

        from huggingface_hub import scan_cache_dir

        report = scan_cache_dir(rs_cache)
        check(
            "huggingface_hub's cache scan accepts schnell's cache",
            not report.warnings and [r.nb_files for r in report.repos] == [2],
            f"{report.warnings} {report.repos}",
        )

        # Both wrote the same blob names (ETags) for the same content.
        names = lambda c: sorted(p.name for p in (c / "models--acme--tiny" / "blobs").iterdir())
        check("same blob names", names(py_cache) == names(rs_cache), f"{names(py_cache)} != {names(rs_cache)}")
        return check.summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
