"""The inspection page's screenshot in docs/: a run's page in headless Debian chromium, a few of its
normal and abnormal test images (and one unreadable file) dropped onto it.

    .venv/bin/python scripts/page_screenshot.py --run runs/quickstart [--output docs/images/inspector.png]

Starts ``skipganomaly serve`` on 127.0.0.1 (a free port), uploads the images through the page's
file input, waits for every row, saves the screenshot and stops the service.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--output", default="docs/images/inspector.png")
    parser.add_argument("--normal", type=int, default=5)
    parser.add_argument("--abnormal", type=int, default=3)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from skipganomaly.data import prepare_data
    from skipganomaly.formats.checkpoint import load_run_checkpoint

    test = prepare_data(load_run_checkpoint(args.run).config.data).test
    rng = np.random.default_rng(1)
    folder = Path(tempfile.mkdtemp(prefix="page-shot-"))
    files = []
    for label, count, stem in ((0, args.normal, "part"), (1, args.abnormal, "part")):
        for i in rng.choice(np.flatnonzero(test.labels == label), count, replace=False):
            image = test.images[i]
            path = folder / f"{stem}_{i:04d}.png"
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).resize(
                (128, 128), Image.BICUBIC
            ).save(path)
            files.append(str(path))
    broken = folder / "scan_0117.png"
    broken.write_bytes(Path(files[0]).read_bytes()[:200])  # a truncated file, as a camera may leave
    files.append(str(broken))

    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skipganomaly",
            "serve",
            "--run",
            args.run,
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = service.stdout.readline()
        url = line.split(" on ", 1)[1].split(": page", 1)[0]
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tempfile.mkdtemp()}",
            "--window-size=1360,1000",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url + "/")
            time.sleep(1)
            driver.find_element(By.ID, "files").send_keys("\n".join(files))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
                if len(rows) == len(files) and not driver.find_elements(
                    By.CSS_SELECTOR, "tr[data-state=pending]"
                ):
                    break
                time.sleep(0.3)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.output)
        finally:
            driver.quit()
    finally:
        service.terminate()
        service.wait(timeout=30)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
