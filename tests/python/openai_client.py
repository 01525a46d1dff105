"""The official `openai` Python client against `schnell serve`.

Run by scripts/test.sh with the schnell binary's path:
    python openai_client.py path/to/schnell
Tiny random-weight models (their images are noise) come from `schnell dev
tiny-models`, served by `schnell mirror`; `schnell serve` fetches them from it.
"""

import base64
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import Checks, Schnell


def main(schnell: str) -> int:
    from openai import OpenAI
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="schnell-openai-"))
    with Schnell(schnell) as run:
        run.run("dev", "tiny-models", str(work / "models"), check=True)
        _, mirror = run.serve_url("mirror", "--dir", str(work / "models"), "--addr", "127.0.0.1:0")
        _, url = run.serve_url("serve", "--addr", "127.0.0.1:0", "--endpoint", mirror,
                               "--cache-dir", str(work / "cache"), "--api-key", "sk-python")
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                status = json.loads(e.read())
                if status.get("phase") == "failed":
                    raise SystemExit(f"the server failed to load: {status}")
            if time.monotonic() > deadline:
                raise SystemExit("the server never became ready")
            time.sleep(0.1)

        check = Checks("openai client")

        client = OpenAI(base_url=f"{url}/v1", api_key="sk-python")
        result = client.images.generate(
            model="flux-schnell",
            prompt="a red fox in the snow",
            size="256x320",
            response_format="b64_json",
            n=1,
            extra_body={"steps": 2, "seed": 5},
        )
        png = base64.b64decode(result.data[0].b64_json)
        image = Image.open(io.BytesIO(png))
        check("images.generate gives a PNG", image.format == "PNG", image.format)
        check("of the requested size", image.size == (256, 320), str(image.size))

        models = client.models.list()
        check("models.list names flux-schnell", [m.id for m in models.data] == ["flux-schnell"])

        try:
            OpenAI(base_url=f"{url}/v1", api_key="sk-wrong").images.generate(prompt="x", size="256x256")
            check("a wrong key is refused", False, "no error")
        except Exception as e:  # noqa: BLE001 - the SDK's AuthenticationError
            check("a wrong key is refused", getattr(e, "status_code", None) == 401, repr(e))
        try:
            client.images.generate(prompt="x", size="1000x1000")
            check("a bad size is refused", False, "no error")
        except Exception as e:  # noqa: BLE001 - the SDK's BadRequestError
            check("a bad size is refused", getattr(e, "status_code", None) == 400 and "1008" in str(e), repr(e))

        return check.summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
