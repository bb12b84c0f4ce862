"""A small file system that fills up: a tmpfs of a few kilobytes, mounted for one test (root only).

Without the rights to mount one the test is skipped, or fails when CI sets RLP_REQUIRE_TMPFS=1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` at `where` for the block."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        problem = mounted.stderr.strip() if mounted.returncode != 0 else None
    except OSError as error:  # no mount program
        problem = str(error)
    if problem is not None:
        message = f"cannot mount a tmpfs (root is needed): {problem}"
        if os.environ.get("RLP_REQUIRE_TMPFS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> None:
    """Take every free byte of `disk` (a file of zeros), so the next write there fails with ENOSPC."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
