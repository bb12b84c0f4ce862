"""Shared test helpers: request files, fast retry settings, and reading results back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor.core.retry_policy import RetryPolicy
from rate_limited_processor.mock_server.record import ServedLog

#: Retries as the product does them, minus the waiting: loopback tests should take seconds.
FAST_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.05, rate_limit_cooldown=0.2)


def chat_request(i: int, *, max_tokens: int = 8) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}],
        "max_tokens": max_tokens,
        "metadata": {"id": i},
    }


def embedding_request(i: int) -> dict[str, Any]:
    return {"model": "text-embedding-3-small", "input": f"document {i}: the quick brown fox {i}", "metadata": {"id": i}}


def write_jsonl(path: Path, lines: Iterable[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_rows(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the command as a user would, without blocking the event loop the mock serves on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rate_limited_processor", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    return process.returncode or 0, stdout.decode(), stderr.decode()


#: The URL virtual-time runs use: only the path matters to `MockTransport`.
MOCK_ORIGIN = "http://mock.invalid"


def mock_url(endpoint: str = "chat/completions") -> str:
    return f"{MOCK_ORIGIN}/v1/{endpoint}"


def nearest_rank(values: list[float], percent: float) -> float:
    """The exact nearest-rank percentile, as the report defines its percentiles."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def served_stream_times(record: ServedLog) -> tuple[list[float], list[float]]:
    """From the mock's own record of its streamed 200s: each one's time to first token and its latency."""
    ttfts, latencies = [], []
    for entry in record:
        if entry.outcome == 200:
            assert entry.first_token_at is not None and entry.finished_at is not None
            ttfts.append(entry.first_token_at - entry.arrived_at)
            latencies.append(entry.finished_at - entry.arrived_at)
    return ttfts, latencies


def require_program(binary: str | None, package: str, variable: str, tests: str) -> str:
    """The binary a test needs; without it the test is skipped with the reason, or fails when CI sets `variable`=1."""
    if binary is None:
        message = f"no {package} binary (install Debian's {package} package)"
        if os.environ.get(variable) == "1":
            pytest.fail(f"{message}, but {variable}=1 requires the {tests} tests to run")
        pytest.skip(message)
    return binary


def unused_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """`app` on a free loopback port for the block; yields its origin, `http://127.0.0.1:<port>`."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
