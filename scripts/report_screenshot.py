"""A screenshot of an HTML report, as the README shows one (docs/report.png): the page opened
in the system's headless Chromium (driven by Playwright, as tests/test_html_browser.py does),
its top part captured, scaled down and stored as a small palette PNG.

    .venv/bin/python scripts/report_screenshot.py demo-out/report.html docs/report.png

`make demo` writes demo-out/report.html. Needs Chromium (scripts/install_browser.sh).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def screenshot(page: Path, width: int, height: int) -> bytes:
    """The top `height` pixels of `page` at a window `width` pixels wide, as a PNG."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium on PATH: scripts/install_browser.sh installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": width, "height": height})
        view.goto(page.resolve().as_uri(), wait_until="load")
        data = view.screenshot(clip={"x": 0, "y": 0, "width": width, "height": height})
        browser.close()
    return data


def shrink(png: bytes, scale: float, colours: int) -> bytes:
    """`png` scaled by `scale` (Lanczos) with an adaptive palette of `colours`."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    size = (round(image.width * scale), round(image.height * scale))
    small = image.resize(size, Image.Resampling.LANCZOS).quantize(colours)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML report")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1100, help="window width (px)")
    parser.add_argument("--height", type=int, default=1250, help="height captured (px)")
    parser.add_argument("--scale", type=float, default=0.7, help="scale of the PNG")
    parser.add_argument("--colours", type=int, default=256, help="palette size")
    args = parser.parse_args()
    data = shrink(screenshot(args.report, args.width, args.height), args.scale, args.colours)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data) // 1024} KiB")


if __name__ == "__main__":
    main()
