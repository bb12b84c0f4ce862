"""Limits shared through a real redis-server: the Lua arithmetic, several clients, and whole runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rate_limited_processor.core.limiter import Limits
from rate_limited_processor.engine.shared_limiter import RedisLimiter, default_limit_key, redis_location
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import chat_request, read_rows, run_cli, unused_port, write_jsonl
from tests.redis_server import running_redis

pytest.importorskip("redis")


@pytest.fixture
def redis_url():  # noqa: ANN201
    with running_redis() as (url, _):
        yield url


async def limiter(url: str, limits: Limits, key: str = "test") -> RedisLimiter:
    return await RedisLimiter.connect(url, key, limits)


async def timed(coroutine) -> float:  # noqa: ANN001
    started = time.monotonic()
    await coroutine
    return time.monotonic() - started


# -- the script's arithmetic -----------------------------------------------------------------------------


async def test_buckets_start_empty_and_pace_requests(redis_url: str) -> None:
    shared = await limiter(redis_url, Limits(600, None))  # 10 a second
    try:
        async def ten() -> None:
            for _ in range(10):
                await shared.acquire(1)

        assert await timed(ten()) == pytest.approx(1.0, abs=0.15)
    finally:
        await shared.aclose()


async def test_both_buckets_bind_and_an_oversize_request_goes_into_debt(redis_url: str) -> None:
    shared = await limiter(redis_url, Limits(60_000, 60_000))  # 1,000 tokens a second, bucket of 1,000
    try:
        assert await timed(shared.acquire(500)) == pytest.approx(0.5, abs=0.1)  # tokens bind
        assert await timed(shared.acquire(3_000)) == pytest.approx(1.0, abs=0.1)  # waits for a full bucket
        assert await timed(shared.acquire(10)) == pytest.approx(2.01, abs=0.15)  # then repays 2,000 of debt
    finally:
        await shared.aclose()


async def test_refill_is_capped_at_one_burst(redis_url: str) -> None:
    shared = await limiter(redis_url, Limits(600, None))  # bucket of 10
    try:
        await shared.acquire(1)  # the shared buckets exist from the first call on
        await asyncio.sleep(2.0)  # idle: the bucket fills to 10, not 20

        async def fifteen() -> None:
            for _ in range(15):
                await shared.acquire(1)

        assert await timed(fifteen()) == pytest.approx(0.5, abs=0.12)
    finally:
        await shared.aclose()


async def test_a_pause_by_one_process_holds_every_process_then_resumes_paced(redis_url: str) -> None:
    first, second = await limiter(redis_url, Limits(600, None)), await limiter(redis_url, Limits(600, None))
    try:
        await first.pause(1.0)
        waited = await timed(second.acquire(1))
        assert waited == pytest.approx(1.1, abs=0.12)  # the pause, then paced from empty
        both = waited + await timed(second.acquire(1))
        assert both == pytest.approx(1.2, abs=0.15)  # (wake-up jitter may shift time between the two)
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_lowest_declared_limits_win_and_a_warning_says_so(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    generous, strict = await limiter(redis_url, Limits(6_000, None)), await limiter(redis_url, Limits(60, None))
    try:
        with caplog.at_level(logging.WARNING, logger="rate_limited_processor"):
            await strict.set_limits(Limits(60, None))
            await generous.acquire(1)  # the first waits 1 s: the strict process's 60 RPM wins
            assert await timed(generous.acquire(1)) == pytest.approx(1.0, abs=0.15)
        assert caplog.text.count("declare different limits") == 1
    finally:
        await generous.aclose()
        await strict.aclose()


async def test_totals_count_every_process_and_refusals_come_off(redis_url: str) -> None:
    first, second = await limiter(redis_url, Limits(None, None)), await limiter(redis_url, Limits(None, None))
    try:
        await first.acquire(100)
        await second.acquire(50)
        await first.refused(100)
        admitted = await second.acquire(7)
    finally:
        await first.aclose()
        await second.aclose()
    assert (admitted.requests, admitted.tokens) == (2, 57)


async def test_output_tokens_are_reserved_and_refunded_in_redis_as_in_process(redis_url: str) -> None:
    shared = await limiter(redis_url, Limits(None, None, output_tokens_per_minute=6_000))  # 100 a second, a bucket of one second
    try:
        assert await timed(shared.acquire(10, output_tokens=200)) == pytest.approx(1.0, abs=0.2)  # a full bucket, then debt
        await shared.refund(180)  # the answer used 20 of its 200
        assert await timed(shared.acquire(10, output_tokens=200)) == pytest.approx(0.2, abs=0.15)
        admitted = await shared.acquire(10, output_tokens=0)
    finally:
        await shared.aclose()
    assert admitted.output_tokens == 400 - 180


async def test_a_factory_gives_each_account_and_model_its_own_key_and_none_holds_the_api_key(redis_url: str) -> None:
    from rate_limited_processor.config.settings import Account
    from rate_limited_processor.engine.shared_limiter import RedisLimiterFactory

    accounts = [Account("org-a", api_key="sk-secret-key-a-123"), Account("org-b", api_key="sk-secret-key-b-456")]
    factory = await RedisLimiterFactory.connect(redis_url, "https://api.openai.com/v1/chat/completions")
    try:
        made = [factory(account, model, Limits(600, None)) for account in accounts for model in ("gpt-4o", "gpt-4o-mini")]
        assert len({limiter.key for limiter in made}) == 4
        assert all("sk-secret" not in limiter.key and "sk-secret" not in repr(limiter) for limiter in made)
        for each in made:
            await each.acquire(1)
            await each.aclose()  # the factory's connection stays open for the others
        named = RedisLimiterFactory(factory._client, "https://api.openai.com/v1/chat/completions", limit_key="team", accounts=2)
        assert named.key_for(accounts[0], "gpt-4o") == named.key_for(accounts[0], "gpt-4o-mini") == "team:org-a"
    finally:
        await factory.aclose()


async def test_keys_expire_when_idle_and_hold_no_api_key(redis_url: str) -> None:
    import redis.asyncio as redis

    key = default_limit_key("https://api.openai.com/v1/chat/completions", "gpt-4o-mini", "sk-secret-key-value")
    assert "sk-secret" not in key and key.startswith("api.openai.com:gpt-4o-mini:")
    shared = await limiter(redis_url, Limits(600, 10_000), key=key)
    client = redis.from_url(redis_url)
    try:
        await shared.acquire(1)
        names = [name.decode() if isinstance(name, bytes) else name for name in await client.keys("*")]
        assert len(names) == 2 and all("sk-secret" not in name for name in names)
        for name in names:
            assert 0 < await client.pttl(name) <= 600_000
            assert b"sk-secret" not in json.dumps(str(await client.hgetall(name))).encode()
    finally:
        await shared.aclose()
        await client.aclose()


async def test_concurrent_callers_across_connections_stay_within_the_shared_rate(redis_url: str) -> None:
    callers = [await limiter(redis_url, Limits(1_200, None)) for _ in range(3)]  # 20 a second between them
    admitted_at: list[float] = []

    async def take(shared: RedisLimiter) -> None:
        await shared.acquire(1)
        admitted_at.append(time.monotonic())

    started = time.monotonic()
    try:
        await asyncio.gather(*(take(callers[i % 3]) for i in range(60)))
    finally:
        for shared in callers:
            await shared.aclose()
    # 60 at 20 a second from empty buckets: 3 s, never less; a loaded machine (two test workers on two cores) may
    # add some, a limiter pacing at two thirds of the rate would take 4.5 s.
    assert 2.6 <= time.monotonic() - started <= 4.0
    admitted_at.sort()
    for i, start in enumerate(admitted_at):  # any 1-second window: at most 20 + a bucket of 20
        assert sum(1 for t in admitted_at[i:] if t < start + 1.0) <= 40


def test_redis_location_hides_credentials() -> None:
    assert redis_location("redis://:hunter2@cache.internal:6380/2") == "cache.internal:6380/2"


# -- whole runs ------------------------------------------------------------------------------------------


def command(input_path: Path, output_path: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rate_limited_processor", "--requests_filepath", str(input_path),
        "--save_filepath", str(output_path), "--request_url", url,
        "--max_requests_per_minute", "6000", "--max_tokens_per_minute", "10000000", *extra,
    ]


async def three_processes(tmp_path: Path, server: MockServer, *extra: str, patience: float) -> tuple[list[int | None], list[list]]:
    """A file of 900 requests split in thirds, one process each, all told the account's full limits. A process
    still running after `patience` seconds is killed (its code None): uncoordinated processes that each learned a
    small share of the account can take a minute or more to finish theirs, and the judge is their 429s."""
    procs = []
    for part in range(3):
        input_path = write_jsonl(tmp_path / f"part{part}.jsonl", [chat_request(i) for i in range(part * 300, (part + 1) * 300)])
        argv = command(input_path, tmp_path / f"out{part}.jsonl", server.url("chat/completions"), *extra)
        procs.append(await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
    await asyncio.wait(waits, timeout=patience)
    codes: list[int | None] = [wait.result() if wait.done() else None for wait in waits]
    for proc, wait in zip(procs, waits, strict=True):
        if not wait.done():
            with contextlib.suppress(ProcessLookupError):  # it may end between the two
                proc.kill()
            await wait
    # Whole rows only: a killed process may have left its last one torn.
    lines = [line for part in range(3) for line in (tmp_path / f"out{part}.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    return codes, [json.loads(line) for line in lines]


@pytest.mark.e2e
async def test_three_processes_share_one_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mock = MockConfig(requests_per_minute=6_000, tokens_per_minute=10_000_000, ratelimit_headers=False)
    figures = {}
    for shared in (True, False):
        with running_redis() as (url, _):
            async with MockServer(mock) as server:
                extra = ("--redis_url", url, "--limit_key", "team-account") if shared else ()
                workdir = tmp_path / ("shared" if shared else "alone")
                workdir.mkdir()
                codes, rows = await three_processes(workdir, server, *extra, patience=60.0 if shared else 40.0)
                arrivals = sorted(entry.arrived_at for entry in server.record)
                figures[shared] = (codes, rows, arrivals[-1] - arrivals[0], server.record.count(429), len(server.record))
    codes, rows, span, rejected, sent = figures[True]
    assert codes == [0, 0, 0]
    assert Counter(row[2]["id"] for row in rows) == Counter(range(900))
    ideal = 899 / 100  # 900 requests at 6,000 RPM, from the first to the last
    assert span <= 1.05 * ideal, f"{span:.2f}s against an ideal of {ideal:.2f}s"
    assert rejected <= 9
    alone_codes, alone_rows, alone_span, alone_rejected, alone_sent = figures[False]
    unfinished = alone_codes.count(None)
    with capsys.disabled():
        print(f"\n  three processes, one account (6,000 RPM, no x-ratelimit headers to learn from):"
              f"\n    sharing through Redis: {span:.2f}s for 900 requests (ideal {ideal:.2f}s), {rejected} 429s"
              f"\n    each on its own:       {alone_span:.2f}s for {len(alone_rows)} rows"
              f"{f' ({unfinished} still running at 40 s, killed)' if unfinished else ''}, {alone_rejected} 429s in {alone_sent} attempts")
    assert alone_rejected > rejected  # without sharing, the account's limit is spent three times over


async def test_redis_unreachable_at_start_is_a_usage_error_and_nothing_is_sent(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(5)])
    async with MockServer() as server:
        code, _, stderr = await run_cli(*command(input_path, tmp_path / "out.jsonl", server.url("chat/completions"),
                                                 "--redis_url", f"redis://:pw-secret@127.0.0.1:{unused_port()}/0")[3:])
        assert len(server.record) == 0
    assert code == 2 and "cannot reach Redis at 127.0.0.1:" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "pw-secret" not in stderr


async def test_redis_lost_mid_run_stops_sending_and_a_rerun_resumes(tmp_path: Path) -> None:
    n = 400
    input_path = write_jsonl(tmp_path / "in.jsonl", [chat_request(i) for i in range(n)])
    output_path = tmp_path / "out.jsonl"
    port = unused_port()
    async with MockServer(MockConfig(latency=0.05)) as server:
        argv = command(input_path, output_path, server.url("chat/completions"), "--redis_url", f"redis://127.0.0.1:{port}/0")
        with running_redis(port) as (_, redis_process):
            process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            while not output_path.exists() or len(output_path.read_text().splitlines()) < 50:
                await asyncio.sleep(0.05)
            redis_process.send_signal(signal.SIGKILL)
            lost_at = time.monotonic()
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        text = stderr.decode()
        assert process.returncode == 3, text
        assert "the rate limiter failed" in text and "STOPPED EARLY" in text
        late = [entry for entry in server.record if entry.arrived_at > lost_at + 0.5]
        assert late == []  # no silent fallback to unshared limits
        with running_redis(port):
            code, _, stderr2 = await run_cli(*argv[3:])
        assert code == 0, stderr2
    rows = read_rows(output_path)
    assert Counter(row[2]["id"] for row in rows) == Counter(range(n))


async def test_an_unlimited_dimension_builds_no_debt_for_when_it_gets_a_limit(redis_url: str) -> None:
    shared = await limiter(redis_url, Limits(None, None))
    try:
        for _ in range(200):
            await shared.acquire(500)  # 100,000 tokens while unlimited
        await shared.set_limits(Limits(600, 300_000))
        assert await timed(shared.acquire(500)) < 0.5  # not 100,000 / 5,000 = 20 s of old debt
    finally:
        await shared.aclose()


async def test_a_malformed_redis_url_is_a_usage_error(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", [chat_request(1)])
    code, _, stderr = await run_cli(*command(input_path, tmp_path / "out.jsonl", "http://127.0.0.1:9/v1/chat/completions", "--redis_url", "http://not-redis")[3:])
    assert code == 2 and "not a Redis URL" in stderr
