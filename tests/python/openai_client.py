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
import time
import urllib.request
from pathlib import Path

from harness import Checks, Schnell, work_dir


def main(schnell: str) -> int:
    from openai import OpenAI
    from PIL import Image

    work = work_dir("schnell-openai-")
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

        # Every field OpenAI's client sends, with their meanings here.
        result = client.images.generate(
            model="flux-schnell",
            prompt="a red fox in the snow",
            size="256x320",
            n=2,
            output_format="webp",
            output_compression=60,
            quality="high",
            background="auto",
            moderation="low",
            style="vivid",
            user="u-1",
            extra_body={"steps": 1, "seed": 9},
        )
        webp = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        check("n=2 gives two images", len(result.data) == 2, str(len(result.data)))
        check("as WebP", webp.format == "WEBP" and webp.size == (256, 320), f"{webp.format} {webp.size}")
        check("echoes size, format, quality and an opaque background",
              (result.size, result.output_format, result.quality, result.background)
              == ("256x320", "webp", "high", "opaque"),
              f"{result.size} {result.output_format} {result.quality} {result.background}")
        usage = result.usage
        check("usage counts the prompt and the latent patches",
              usage is not None and usage.input_tokens_details.text_tokens > 1
              and usage.output_tokens == 2 * (256 // 16) * (320 // 16)
              and usage.total_tokens == usage.input_tokens + usage.output_tokens,
              repr(usage))

        auto = client.images.generate(prompt="x", size="auto", extra_body={"steps": 1})
        check("size auto is 1024x1024", Image.open(io.BytesIO(base64.b64decode(auto.data[0].b64_json))).size
              == (1024, 1024) and auto.size == "1024x1024", str(auto.size))

        # Streamed: partial_images=2 over 4 steps, then the image.
        stream = client.images.generate(
            prompt="a red fox", size="256x256", stream=True, partial_images=2,
            extra_body={"steps": 4, "seed": 3},
        )
        events = list(stream)
        kinds = [e.type for e in events]
        check("a stream sends 2 partial images then the completed one",
              kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], str(kinds))
        check("partial images count from 0",
              [e.partial_image_index for e in events[:-1]] == [0, 1], str(events[:-1]))
        final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
        check("the completed event carries the image and usage",
              final.size == (256, 256) and events[-1].usage.output_tokens == 16 * 16, str(final.size))

        # /metrics, read by the Prometheus project's own OpenMetrics parser.
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": "Bearer sk-python"})
        with urllib.request.urlopen(request) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        images = families["schnell_images"].samples[0].value
        check("/metrics parses and counts the images made", images == 1 + 2 + 1 + 1, str(images))
        steps = [s for s in families["schnell_stage_seconds"].samples
                 if s.name == "schnell_stage_seconds_count" and s.labels["stage"] == "step"]
        # n=2 makes its two images in one batch: one pass for its one step.
        check("with a histogram of step times", steps and steps[0].value == 2 + 1 + 1 + 4, str(steps))

        models = client.models.list()
        check("models.list names flux-schnell", [m.id for m in models.data] == ["flux-schnell"])

        # Edits: the image and its mask uploaded as files, as the client sends them.
        def png_file(image):
            out = io.BytesIO()
            image.save(out, "PNG")
            return out.getvalue()
        source = png_file(Image.new("RGB", (320, 256), (200, 40, 40)))
        mask = Image.new("RGBA", (320, 256), (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (0, 0, 160, 256))  # repaint the left half
        edited = client.images.edit(
            image=("in.png", source, "image/png"),
            mask=("mask.png", png_file(mask), "image/png"),
            prompt="a red fox", n=2, output_format="jpeg",
            extra_body={"steps": 2, "seed": 4, "strength": 0.6},
        )
        sizes = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in edited.data]
        check("images.edit gives n images at the image's own size",
              sizes == [(320, 256)] * 2 and edited.size == "320x256", f"{sizes} {edited.size}")
        check("as JPEG, with the seeds counting up",
              edited.output_format == "jpeg"
              and [d.model_extra.get("seed") for d in edited.data] == [4, 5],
              repr(edited.data[0].model_extra.keys()))
        check("usage counts both images' patches",
              edited.usage.output_tokens == 2 * (320 // 16) * (256 // 16), repr(edited.usage))
        stream = client.images.edit(
            image=("in.png", source, "image/png"), prompt="a red fox", size="256x256",
            stream=True, partial_images=1, extra_body={"steps": 2, "seed": 1},
        )
        kinds = [e.type for e in stream]
        check("a streamed edit sends its partial image then the completed one",
              kinds == ["image_edit.partial_image", "image_edit.completed"], str(kinds))
        try:
            client.images.edit(image=("in.png", source, "image/png"), prompt="x",
                               extra_body={"strength": 1.5})
            check("a bad strength is refused", False, "no error")
        except Exception as e:  # noqa: BLE001 - the SDK's BadRequestError
            check("a bad strength is refused",
                  getattr(e, "status_code", None) == 400 and "strength" in str(e), repr(e))

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
