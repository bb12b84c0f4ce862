"""A soak: 20,000 requests through 10% injected faults and a 429 storm, memory flat, every line once.

In virtual time (the mock as the transport): the storm, the hangs and the backoffs cost no wall-clock time,
so what the test measures is the run's own work and memory.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from tests.helpers import embedding_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual

REQUESTS = 20_000
#: 10% of requests faulted, across every kind a flaky network or gateway produces.
FAULTS = {"500": 0.025, "503": 0.02, "reset": 0.02, "hang": 0.005, "html_502": 0.03}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.e2e
def test_soak_with_faults_and_a_429_storm(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", (embedding_request(i) for i in range(REQUESTS)))
    output_path = tmp_path / "results.jsonl"
    # The client is told twice the mock's request limit, and the mock (a gateway hiding the limits)
    # sends no x-ratelimit headers to correct it: 429 storms until the client has backed off.
    api = MockApi(MockConfig(requests_per_minute=30_000, faults=FAULTS, seed=11, ratelimit_headers=False, latency=0.05))
    settings = Settings(
        request_url=mock_url("embeddings"), limits=Limits(requests_per_minute=60_000, tokens_per_minute=math.inf),
        retry=RetryPolicy(max_attempts=12, initial_delay=0.01, max_delay=0.2, rate_limit_cooldown=0.2), request_timeout=0.5, max_in_flight=200,
    )
    samples: list[tuple[int, int]] = []  # (rows written, RSS)

    async def sample_memory() -> None:
        while True:
            rows = output_path.stat().st_size // 120 if output_path.exists() else 0
            samples.append((rows, rss_bytes()))
            await asyncio.sleep(0.2)

    async def main() -> Any:
        sampler = asyncio.create_task(sample_memory())
        try:
            return await run_file_job(settings, input_path, output_path, show_progress=False, transport=MockTransport(api))
        finally:
            sampler.cancel()

    stats = run_virtual(main())
    counts = api.record.counts()

    rows = read_rows(output_path)
    assert Counter(row[2]["id"] for row in rows) == Counter(range(REQUESTS))
    assert all(isinstance(row[1], dict) for row in rows), "every request succeeded within its attempts"
    assert stats.succeeded == REQUESTS and stats.failed == 0
    for kind in (500, 503, 502, "reset", "hang", 429):
        assert counts[kind] > 0, f"{kind} never happened: {counts}"
    assert counts[429] > 20, "the storm happened"
    # Memory flat: after the first quarter, RSS grows by less than 25 MB over the remaining three quarters
    # (the mock's own record, in this process, accounts for a few MB of that).
    after_first_quarter = [rss for written, rss in samples if written >= REQUESTS // 4]
    assert after_first_quarter, "the run finished before memory could be sampled"
    assert max(after_first_quarter) - after_first_quarter[0] < 25 * 2**20, [rss // 2**20 for _, rss in samples]
