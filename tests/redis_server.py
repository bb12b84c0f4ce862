"""A real redis-server on a free loopback port, for the tests that share limits through Redis.

Tests that need one are skipped, with the reason shown, only when no redis-server binary exists; CI
sets RLP_REQUIRE_REDIS=1 (and installs the server), which turns that skip into a failure.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.helpers import require_program, unused_port

REQUIRE_VARIABLE = "RLP_REQUIRE_REDIS"


def redis_binary() -> str:
    return require_program(shutil.which("redis-server"), "redis-server", REQUIRE_VARIABLE, "Redis")


@contextmanager
def running_redis(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start redis-server (no persistence), yield (url, process); stop it afterwards."""
    port = port or unused_port()
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(timeout=10)
