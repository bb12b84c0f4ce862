"""Start the project's mock API as its own process, for the examples."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def mock_api(*flags: str) -> Iterator[str]:
    """Run `python -m rate_limited_processor.mock_server --port 0 FLAGS`; yield its base URL (".../v1")."""
    mock = subprocess.Popen(
        [sys.executable, "-m", "rate_limited_processor.mock_server", "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert mock.stdout is not None
        for line in mock.stdout:
            match = re.search(r"(http://\S+/v1)", line)
            if match:
                yield match.group(1)
                return
        raise SystemExit("the mock API did not start")
    finally:
        mock.terminate()
        mock.wait(timeout=10)
