"""Slow answers behind a limiter nobody here wrote (issue 23): nginx's limit_req at 600 RPM in front of the mock,
answers of 5-15 s, the client told 3x too much and given no hints (nginx's HTML 429 says nothing). The
virtual-time judge in test_slow_answers.py stands in for nginx; this one is nginx, in real time (about 80 s),
so it is an end-to-end test (`make test-e2e`). The full judge (1,800 requests, answers of 15-45 s) is
`benchmarks/slow_answers.py`.
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
BURST = 5  # as in test_nginx_gateway.py
# The judge's shape shortened by three: the ideal is six middle latencies (there 180 s and 30 s, here 60 s and
# 10 s), so a client pacing perfectly finishes at about 1.25x (its last answers take up to 15 s).
REQUESTS = 600
IDEAL = REQUESTS / TRUE_PER_SECOND


async def test_behind_nginx_answers_of_5_to_15_s_told_3x_too_much_go_at_the_limit(tmp_path: Path) -> None:
    require_nginx()
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(REQUESTS)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(latency=5, latency_jitter=10)) as upstream:
        with nginx_gateway(f"127.0.0.1:{upstream.port}", tmp_path / "nginx", rate=TRUE_PER_SECOND, burst=BURST) as gateway:
            settings = Settings(
                request_url=f"{gateway}/v1/chat/completions",
                limits=Limits(3 * TRUE_PER_SECOND * 60, math.inf),
                retry=RetryPolicy(max_attempts=2),  # a 429 must cost no attempt; the default request timeout
            )
            started = time.monotonic()
            stats = await run_file_job(settings, input_path, output_path, show_progress=False)
            elapsed = time.monotonic() - started
        admitted = upstream.record.count(200)
    rows = read_rows(output_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(REQUESTS)), "every line exactly once"
    assert all(isinstance(row[1], dict) and "error" not in row[1] for row in rows), "no failure rows"
    assert admitted == REQUESTS  # nginx passed on exactly one request per line
    print(f"\n  nginx limit_req at {TRUE_PER_SECOND * 60} RPM, answers 5-15 s, told 3x: {elapsed:.1f}s ({elapsed / IDEAL:.3f}x the ideal "
          f"{IDEAL:.0f}s), {stats.rate_limit_errors} 429s ({stats.rate_limit_errors / REQUESTS:.1%})")
    print("\n".join(line for line in format_summary(stats).splitlines() if "rate control" in line or "in flight" in line))
    assert elapsed <= 1.35 * IDEAL, f"{elapsed:.1f}s against an ideal of {IDEAL:.0f}s"
    found = stats.control.found_requests_per_minute if stats.control is not None else None
    assert found is None or 0.9 * 600 <= found <= 1.1 * 600, f"advised {found} RPM"
