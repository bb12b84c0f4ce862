"""The mock API in a child process: for the examples, the benchmarks, and rehearsing from a script.

It reads the base URL from the banner `__main__` prints ("Mock OpenAI API at http://HOST:PORT/v1 ..."),
so that banner and this parser change together.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["MockProcess"]


class MockProcess:
    """The mock API in a child process, so its CPU is not charged to the client being measured.

    Usage::

        with MockProcess() as mock:
            url = mock.url("chat/completions")
            ...
            print(mock.stats())        # {"total": ..., "by_status": {"200": ...}}
    """

    def __init__(self, *extra_args: str) -> None:
        command = [sys.executable, "-m", "rate_limited_processor.mock_server", "--port", "0", *extra_args]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        banner = self._process.stdout.readline()  # "Mock OpenAI API at http://127.0.0.1:PORT/v1  (stats: …)"
        match = re.search(r"(http://\S+)/v1\b", banner)
        if match is None:
            self.close()
            raise RuntimeError(f"the mock did not print its URL; it printed {banner!r}")
        self.origin = match.group(1)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. "http://127.0.0.1:54321/v1"."""
        return f"{self.origin}/v1"

    def url(self, endpoint: str) -> str:
        return f"{self.base_url}/{endpoint}"

    def cpu_seconds(self) -> float:
        """User + system CPU the mock has used so far (Linux: /proc/<pid>/stat), to tell whether it was the bottleneck."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.origin}/mock/stats", timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
            return stats

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
