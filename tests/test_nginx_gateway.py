"""Judged by a limiter nobody here wrote: nginx's limit_req in front of the mock, answering over-limit requests
with an HTML 429 and nothing else (no x-ratelimit headers, no hint). A true 600 RPM; the client is told 3x
and 10x too much. Real time: a minute each, so these are end-to-end tests (`make test-e2e`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.ui.summary import format_summary
from tests.helpers import chat_request, read_rows, write_jsonl
from tests.nginx_gateway import nginx_gateway, require_nginx

pytestmark = pytest.mark.e2e

TRUE_PER_SECOND = 10  # 600 RPM
BURST = 5
REQUESTS = 600
IDEAL = REQUESTS / TRUE_PER_SECOND


@pytest.mark.parametrize(("told", "most_time"), [(3, 1.15), (10, 1.20)])
async def test_behind_nginx_limit_req_a_limit_told_too_high_costs_little_and_loses_nothing(tmp_path: Path, told: int, most_time: float) -> None:
    require_nginx()
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(REQUESTS)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(latency=0.1, latency_jitter=0.2)) as upstream:
        with nginx_gateway(f"127.0.0.1:{upstream.port}", tmp_path / "nginx", rate=TRUE_PER_SECOND, burst=BURST) as gateway:
            settings = Settings(
                request_url=f"{gateway}/v1/chat/completions",
                limits=Limits(told * TRUE_PER_SECOND * 60, math.inf),
                retry=RetryPolicy(max_attempts=2),
                request_timeout=30,
            )
            started = time.monotonic()
            stats = await run_file_job(settings, input_path, output_path, show_progress=False)
            elapsed = time.monotonic() - started
        admitted = upstream.record.count(200)
    rows = read_rows(output_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(REQUESTS)), "every line exactly once"
    assert all(isinstance(row[1], dict) for row in rows), "no failure rows"
    assert admitted == REQUESTS  # nginx passed on exactly one request per line
    print(f"\n  nginx limit_req at {TRUE_PER_SECOND * 60} RPM, told {told}x: {elapsed:.1f}s ({elapsed / IDEAL:.3f}x the ideal {IDEAL:.0f}s), "
          f"{stats.rate_limit_errors} 429s ({stats.rate_limit_errors / REQUESTS:.1%})")
    print("\n".join(line for line in format_summary(stats).splitlines() if "rate control" in line))
    assert elapsed <= most_time * IDEAL, f"{elapsed:.1f}s against an ideal of {IDEAL:.0f}s"
    found = stats.control.found_requests_per_minute if stats.control is not None else None
    assert found is not None and 0.9 * 600 <= found <= 1.1 * 600
