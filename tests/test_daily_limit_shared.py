"""Per-day limits counted across processes through a real redis-server (`--redis_url`): one total per UTC day and
limit key, checked and counted in one atomic step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rate_limited_processor.engine.shared_day import RedisDaySpend
from rate_limited_processor.engine.shared_limiter import RedisLimiterFactory
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import chat_request, read_rows, run_cli, write_jsonl
from tests.redis_server import running_redis

pytest.importorskip("redis")


@pytest.fixture
def redis_url():  # noqa: ANN201
    with running_redis() as (url, _):
        yield url


async def test_two_clients_share_one_days_count_and_another_day_or_key_counts_apart(redis_url: str) -> None:
    factory = await RedisLimiterFactory.connect(redis_url, "https://api.openai.com/v1/chat/completions")
    try:
        one, other = factory.day_spend("sk-a"), factory.day_spend("sk-a")
        assert one.limit_key == other.limit_key and "sk-a" not in one.limit_key, "the key is hashed, never stored"
        taken = [await (one if i % 2 else other).take("2026-03-14", 10, 5, None) for i in range(7)]
        assert [counted for counted, _, _ in taken] == [True] * 5 + [False] * 2
        assert taken[-1][1:] == (5, 50), "a refusal reports the totals as they stand"
        assert (await one.take("2026-03-15", 10, 5, None))[:2] == (True, 1), "the next day starts from nothing"
        assert (await factory.day_spend("sk-b").take("2026-03-14", 10, 5, None))[0], "another key: another count"
        tokens = RedisDaySpend(factory._client, "tokens-only")
        assert (await tokens.take("2026-03-14", 900, None, 1_000))[0]
        assert not (await tokens.take("2026-03-14", 101, None, 1_000))[0] and (await tokens.take("2026-03-14", 100, None, 1_000))[0]
    finally:
        await factory.aclose()


async def test_two_processes_on_one_key_keep_one_daily_limit_between_them(tmp_path: Path, redis_url: str) -> None:
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    async with MockServer(MockConfig(latency=0.01)) as server:
        runs = []
        for name, output in zip("ab", outputs, strict=True):
            input_path = write_jsonl(tmp_path / f"{name}-requests.jsonl", [chat_request(i) for i in range(40)])
            runs.append(run_cli(
                "--requests_filepath", str(input_path), "--save_filepath", str(output), "--request_url", server.url("chat/completions"),
                "--max_requests_per_minute", "6000", "--max_tokens_per_minute", "10000000", "--redis_url", redis_url,
                "--limit_key", "team", "--max_requests_per_day", "50",
            ))
        results = await asyncio.gather(*runs)
        sent = [len(read_rows(output)) if output.exists() else 0 for output in outputs]
        assert sum(sent) == 50 and len(server.record.entries) == 50, sent
        # Which process meets the limit depends on when each started (one may finish its 40 first, on a loaded
        # machine): each either finished its lines or stopped at the shared limit, and at least one stopped.
        for (code, _, stderr), rows in zip(results, sent, strict=True):
            assert (code, rows) == (0, 40) or (code == 3 and "--max_requests_per_day 50 reached" in stderr), (code, rows, stderr[-300:])
        assert any(code == 3 for code, _, _ in results)
