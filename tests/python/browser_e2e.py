"""End to end in a real browser: the Trunk-built page, served by `schnell serve`
with tiny random-weight models (their images are noise) fetched from
`schnell mirror`, driven through ChromeDriver in Debian's headless Chromium.

Run by scripts/test.sh:
    python browser_e2e.py path/to/schnell path/to/dist path/to/artefacts
Screenshots land in the artefacts folder.
"""

import os
import sys
import urllib.request
from pathlib import Path

from harness import Checks, Schnell, work_dir

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
PROMPT = "a red fox in the snow"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--window-size=1280,1400"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager is never asked to download one.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def drive(driver, check, url, broken_url, serve, out):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120, poll_frequency=0.05)
    by_id = lambda i: driver.find_element(By.ID, i)

    # Readiness: the broken server's failure is shown, not a spinner forever.
    driver.get(broken_url)
    wait.until(lambda d: "failed" in by_id("status").get_attribute("class"))
    status = by_id("status-text").text
    check("a server whose model cannot load says so", "failed to load" in status, status)

    # The real page: it waits for /readyz, then loads both tokenizers via /hub.
    driver.get(url)
    wait.until(lambda d: by_id("token-counts").text.startswith("CLIP"))
    check("the readiness banner is gone once ready", not by_id("status").is_displayed())
    check("the model's name is shown", by_id("model").text == "flux-schnell", by_id("model").text)

    prompt = by_id("prompt")
    prompt.send_keys("a red fox")
    wait.until(lambda d: by_id("token-counts").text.startswith("CLIP 5/"))
    counts = by_id("token-counts").text
    check("live token counts for CLIP and T5", counts == "CLIP 5/77 · T5 4/256 tokens", counts)
    check("nothing is marked as dropped", not by_id("dropped").is_displayed())

    prompt.clear()
    prompt.send_keys("a red fox " * 30)
    wait.until(lambda d: by_id("dropped").is_displayed())
    marked = by_id("dropped").find_element(By.TAG_NAME, "mark").text
    check("words past CLIP's 77 tokens are marked",
          marked.startswith("a red fox") and len(marked.split()) == 15, marked)
    check("the count turns to a warning", "over" in by_id("token-counts").get_attribute("class"))

    prompt.clear()
    prompt.send_keys(PROMPT)
    for field, value in (("width", "250"), ("height", "320"), ("steps", "2"), ("seed", "7")):
        by_id(field).clear()
        by_id(field).send_keys(value)
    by_id("generate").click()
    wait.until(lambda d: by_id("error").is_displayed())
    error = by_id("error").text
    check("a bad width is refused in the page, naming the field",
          error.startswith("Width") and "nearest valid width is 256" in error, error)
    check("the width field is marked", by_id("width").get_attribute("aria-invalid") == "true")

    by_id("width").clear()
    by_id("width").send_keys("256")
    # Record every progress text and image source the page shows.
    driver.execute_script("""
        window.__seen = [];
        const watch = (el, read) => new MutationObserver(() => window.__seen.push(read(el)))
            .observe(el, {subtree: true, childList: true, characterData: true, attributes: true});
        watch(document.getElementById('progress-text'), el => 'text:' + el.textContent);
        watch(document.getElementById('image'), el => 'src:' + el.src.slice(0, 22));
    """)
    by_id("generate").click()
    wait.until(lambda d: by_id("image").get_attribute("data-seed") == "7"
               and d.execute_script("const i = document.getElementById('image');"
                                    "return i.complete && i.naturalWidth > 0;"))
    size = driver.execute_script(
        "const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight];")
    check("the image shows at the requested size", size == [256, 320], str(size))
    seen = driver.execute_script("return window.__seen;")
    check("each step's progress was shown",
          "text:Step 1 of 2" in seen and "text:Step 2 of 2" in seen, str(seen[:12]))
    previews = [s for s in seen if s.startswith("src:data:image/png")]
    final = [i for i, s in enumerate(seen) if s.startswith("src:blob:")]
    check("previews came before the final image",
          previews and final and seen.index(previews[0]) < final[-1], str(seen[:12]))
    info = by_id("image-seed").text
    check("the seed is shown", info.startswith("Seed 7 · 256×320"), info)
    link = by_id("download")
    check("a download link for the PNG",
          link.get_attribute("download") == "schnell-7-256x320.png"
          and link.get_attribute("href").startswith("blob:"), link.get_attribute("href"))
    check("Generate is enabled again", by_id("generate").is_enabled())
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 1)
    driver.save_screenshot(str(out / "e2e-result.png"))

    driver.refresh()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 1
               and d.execute_script("const i = document.querySelector('#history li img');"
                                    "return i.complete && i.naturalWidth > 0;"))
    entry = driver.find_element(By.CSS_SELECTOR, "#history li")
    check("the history keeps it after a reload",
          entry.find_element(By.CLASS_NAME, "history-prompt").text == PROMPT,
          entry.text)
    thumb = driver.execute_script(
        "const i = document.querySelector('#history li img'); return [i.naturalWidth, i.naturalHeight];")
    check("with its image, from the browser's storage", thumb == [256, 320], str(thumb))
    check("and its seed", "seed 7" in entry.find_element(By.CLASS_NAME, "history-meta").text)
    driver.save_screenshot(str(out / "e2e-after-reload.png"))
    check("the form starts empty after a reload", by_id("prompt").get_attribute("value") == "")
    entry.find_element(By.CLASS_NAME, "reuse").click()
    form = [by_id(i).get_attribute("value") for i in ("prompt", "width", "height", "steps", "seed")]
    check("an entry's settings go back into the form", form == [PROMPT, "256", "320", "2", "7"], str(form))

    # An edit: an image chosen in the page sets the size to its proportions,
    # and Generate sends it to /v1/images/edits.
    from PIL import Image
    source = out / "edit-source.png"
    Image.new("RGB", (600, 300), (30, 120, 200)).save(source)
    driver.find_element(By.CSS_SELECTOR, "#edit-details summary").click()
    by_id("edit-image").send_keys(str(source))
    wait.until(lambda d: by_id("width").get_attribute("value") == "608")
    check("a chosen image sets width and height to its proportions",
          by_id("height").get_attribute("value") == "304", by_id("height").get_attribute("value"))
    check("and it can be removed again", by_id("clear-image").is_displayed())
    for field, value in (("strength", "7"), ("seed", "8")):
        by_id(field).clear()
        by_id(field).send_keys(value)
    by_id("generate").click()
    wait.until(lambda d: by_id("error").is_displayed())
    error = by_id("error").text
    check("a bad strength is refused in the page", error.startswith("Strength") and "(0, 1]" in error, error)
    by_id("strength").clear()
    by_id("strength").send_keys("0.7")
    by_id("generate").click()
    wait.until(lambda d: by_id("image").get_attribute("data-seed") == "8"
               and d.execute_script("const i = document.getElementById('image');"
                                    "return i.complete && i.naturalWidth > 0;"))
    size = driver.execute_script(
        "const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight];")
    check("the edited image shows at the image's proportions", size == [608, 304], str(size))
    with urllib.request.urlopen(f"{url}/metrics") as r:
        metrics = r.read().decode()
    check("the server encoded the image (an edit, not a generation)",
          'schnell_stage_seconds_count{stage="vae_encode"} 1' in metrics,
          [line for line in metrics.splitlines() if "vae_encode" in line])
    driver.save_screenshot(str(out / "e2e-edit.png"))
    by_id("clear-image").click()
    check("removing the image hides its button", not by_id("clear-image").is_displayed())

    # The server goes away: a plain message, no hang.
    serve.terminate()
    serve.wait(timeout=30)
    by_id("generate").click()
    wait.until(lambda d: by_id("error").is_displayed())
    error = by_id("error").text
    check("a server that is down is named plainly", error.startswith("Cannot reach the schnell server"), error)
    check("Generate is usable again after the failure", by_id("generate").is_enabled())
    driver.save_screenshot(str(out / "e2e-server-down.png"))


def main(schnell: str, dist: str, artefacts: str) -> int:
    out = Path(artefacts)
    out.mkdir(parents=True, exist_ok=True)
    work = work_dir("schnell-e2e-")
    check = Checks("browser end to end")
    with Schnell(schnell) as run:
        run.run("dev", "tiny-models", str(work / "models"), check=True)
        _, mirror = run.serve_url("mirror", "--dir", str(work / "models"), "--addr", "127.0.0.1:0")
        serve, url = run.serve_url("serve", "--addr", "127.0.0.1:0", "--endpoint", mirror,
                                   "--cache-dir", str(work / "cache"), "--dist", dist)
        # A second server that cannot get its model: offline with an empty cache.
        _, broken_url = run.serve_url("serve", "--addr", "127.0.0.1:0", "--cache-dir", str(work / "empty"),
                                      "--dist", dist, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        driver = browser()
        try:
            drive(driver, check, url, broken_url, serve, out)
        finally:
            driver.quit()
    return check.summary(f"; screenshots in {out}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
