"""Headless Chromium for the tests: a page rendered and photographed as a person's browser would show it.

Skipped, with the reason, only when no Chromium binary exists. CI installs Debian's `chromium` and sets
RLP_REQUIRE_CHROMIUM=1, which turns that skip into a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers import require_program

__all__ = ["require_chromium", "screenshot"]

REQUIRE_VARIABLE = "RLP_REQUIRE_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_binary() -> str | None:
    return next((path for name in _NAMES if (path := shutil.which(name)) is not None), None)


def require_chromium() -> str:
    return require_program(chromium_binary(), "chromium", REQUIRE_VARIABLE, "browser")


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 2200) -> None:
    """Open `page` from disk with no network, and save what the window shows as a PNG."""
    binary = require_chromium()
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # anything fetched would fail, not leave the machine
        f"--window-size={width},{height}", f"--screenshot={png}", page.resolve().as_uri(),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and png.exists(), finished.stderr[-2000:]
