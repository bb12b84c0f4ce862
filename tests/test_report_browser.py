"""The HTML report in a real browser: the command benchmarks the streaming mock (the README's example), and
headless Chromium opens the page from disk and photographs it. The photo must show the charts: the bars of
the distributions and the lines of the timeline, in their colors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from rate_limited_processor.ui.report_html import COLORS
from tests.chromium import require_chromium, screenshot

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "benchmark_report.py"


def colors_of(image: Image.Image) -> Counter[object]:
    """How many pixels have each color (an RGB tuple)."""
    return Counter({color: count for count, color in image.convert("RGB").getcolors(maxcolors=1 << 24) or ()})


def pixels_of(image: Image.Image, color: str) -> int:
    """Pixels of exactly this color (the charts draw flat colors)."""
    return colors_of(image)[tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))]


@pytest.mark.e2e
def test_the_report_page_opens_in_a_browser_with_its_charts(tmp_path: Path) -> None:
    require_chromium()
    finished = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["requests"] == report["succeeded"] == 400 and report["ttft_s"]["count"] == 400
    png = tmp_path / "report.png"
    screenshot(tmp_path / "report.html", png)
    image = Image.open(png)
    assert image.size == (1200, 2200)
    assert pixels_of(image, COLORS["bars"]) > 20_000          # five histograms of bars
    for series in ("sent", "finished", "in_flight"):
        assert pixels_of(image, COLORS[series]) > 150, series  # the timeline's lines
    # Text was laid out too: far more than the few colors of an empty or broken page.
    assert len(colors_of(image)) > 200
