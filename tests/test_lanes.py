"""Lanes: several accounts, a bucket per (account, model), and Anthropic's three limits, in virtual time.

The judges are strict mocks, one per account or model where the provider keeps separate limits: each
enforces its own one-second buckets (Anthropic's output-token bucket holds a minute, as Anthropic's does),
and the test's transport routes each request to the server of its key or its model. Nothing tells the
client which is which but the headers each server sends, as a real account's would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Limits, Processor, RetryPolicy, Settings, run_file_job
from rate_limited_processor.cli import exit_code
from rate_limited_processor.config.settings import Account, read_accounts
from rate_limited_processor.core.limiter import InProcessLimiter
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.engine.lanes import Lanes
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.transport.http import TransportRequest, TransportResponse
from rate_limited_processor.ui.display import bar_postfix
from rate_limited_processor.ui.summary import format_summary, summary_record
from tests.helpers import chat_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

KEY_A = "sk-account-a-0123456789abcdef"
KEY_B = "sk-account-b-fedcba9876543210"
#: The strict mocks' latency, as in the other rate tests: answers take 0.2 to 0.4 s.
LATENCY: dict[str, Any] = {"latency": 0.2, "latency_jitter": 0.2}


class Route:
    """A transport that hands each request to the server its key (or its model) belongs to."""

    def __init__(self, routes: Sequence[tuple[Callable[[TransportRequest], bool], MockApi]]) -> None:
        self.routes = [(belongs, MockTransport(api)) for belongs, api in routes]

    async def send(self, request: TransportRequest) -> TransportResponse:
        for belongs, transport in self.routes:
            if belongs(request):
                return await transport.send(request)
        raise AssertionError(f"no server for {request.url}")

    async def aclose(self) -> None:
        return None


def with_key(key: str) -> Callable[[TransportRequest], bool]:
    return lambda request: key in request.headers.get("Authorization", "")


def with_model(model: str) -> Callable[[TransportRequest], bool]:
    return lambda request: request.body.get("model") == model


def run(tmp_path: Path, settings: Settings, lines: list[Any], transport: Any) -> tuple[float, RunStats, list[Any]]:
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)

    async def main() -> tuple[float, RunStats]:
        started = virtual_time()
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=transport)
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(main())
    rows = read_rows(tmp_path / "results.jsonl")
    ids = sorted(row[2]["id"] for row in rows)
    assert ids == list(range(len(lines))), "every line exactly once"
    return elapsed, stats, rows


def two_accounts(a_limits: Limits, b_limits: Limits, **mock: Any) -> tuple[tuple[Account, ...], MockApi, MockApi]:
    server_a = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_A, **LATENCY, **mock))
    server_b = MockApi(MockConfig(requests_per_minute=1_200, api_key=KEY_B, **LATENCY))
    accounts = (Account("org-a", api_key=KEY_A, limits=a_limits), Account("org-b", api_key=KEY_B, limits=b_limits))
    return accounts, server_a, server_b


# -- several accounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("told", "most_time"),
    [(True, 1.10), (False, 1.15)],
    ids=["limits in the file", "limits left out of the file"],
)
def test_two_accounts_add_up_their_rates(tmp_path: Path, told: bool, most_time: float) -> None:
    accounts, server_a, server_b = two_accounts(Limits(600 if told else None, None), Limits(1_200 if told else None, None))
    settings = Settings(request_url=mock_url(), api_key=None, accounts=accounts)
    n = 900
    elapsed, stats, rows = run(tmp_path, settings, [chat_request(i) for i in range(n)], Route([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)]))
    ideal = n / ((600 + 1_200) / 60)  # 30 s
    assert elapsed <= most_time * ideal, f"{elapsed:.1f}s against an ideal of {ideal:.0f}s"
    rate_limited = server_a.record.count(429) + server_b.record.count(429)
    assert rate_limited <= 0.01 * n
    assert stats.succeeded == n and all(isinstance(row[1], dict) for row in rows)
    # Each account carried its share, and the summary says so with the limits its headers stated.
    shares = {lane.account: lane.sent for lane in stats.lanes}
    assert shares["org-b"] == pytest.approx(2 * shares["org-a"], rel=0.1)
    assert server_a.record.count(200) + server_b.record.count(200) == n
    summary = format_summary(stats)
    assert "org-a/gpt-4o-mini" in summary and "600 RPM" in summary and "1,200 RPM" in summary


def test_an_account_whose_key_is_refused_is_dropped_and_the_others_finish_the_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_a = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_A, **LATENCY))
    server_b = MockApi(MockConfig(requests_per_minute=1_200, api_key="the key org-b really has", **LATENCY))
    # Told its limits, org-b has a window of requests in flight before its first 401 comes back: each of those
    # refusals is about an account already dropped, and stops nothing.
    accounts = (Account("org-a", api_key=KEY_A), Account("org-b", api_key=KEY_B, limits=Limits(1_200, 10_000_000)))
    settings = Settings(request_url=mock_url(), api_key=None, accounts=accounts)
    n = 300
    with caplog.at_level(logging.WARNING, logger="rate_limited_processor"):
        _, stats, rows = run(tmp_path, settings, [chat_request(i) for i in range(n)], Route([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)]))
    assert stats.succeeded == n and exit_code(stats) == 0, "a refused account costs no line"
    assert 1 < server_b.record.count(401) <= 20, "its first answer drops it; those already in flight are sent again elsewhere"
    assert list(stats.dropped_accounts) == ["org-b"] and "401" in stats.dropped_accounts["org-b"]
    assert "account 'org-b'" in caplog.text and "dropping it" in caplog.text
    assert "dropped account  org-b" in format_summary(stats)
    assert all(isinstance(row[1], dict) for row in rows), "no line carries the refused account's error"


def test_the_pace_is_held_against_the_accounts_still_in_use() -> None:
    server_a = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_A, **LATENCY))
    server_b = MockApi(MockConfig(requests_per_minute=1_200, api_key="the key org-b really has", **LATENCY))
    accounts = (Account("org-a", api_key=KEY_A, limits=Limits(600, None)), Account("org-b", api_key=KEY_B, limits=Limits(1_200, None)))
    transport = Route([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)])
    processor = Processor(Settings(request_url=mock_url(), api_key=None, accounts=accounts), transport=transport)

    async def main() -> int:
        return sum([result.succeeded async for result in processor.process([chat_request(i) for i in range(60)])])

    assert run_virtual(main()) == 60 and list(processor.stats.dropped_accounts) == ["org-b"]
    assert processor.stats.limits.requests_per_minute == 600, "org-b's 1,200 RPM went with its key"


def test_an_account_out_of_quota_is_dropped_and_when_none_is_left_the_run_stops_for_a_rerun(tmp_path: Path) -> None:
    quota: dict[str, Any] = {"faults": {"insufficient_quota": 1.0}}
    server_a = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_A, **LATENCY, **quota))
    server_b = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_B, **LATENCY, **quota))
    accounts = (Account("org-a", api_key=KEY_A), Account("org-b", api_key=KEY_B))
    settings = Settings(request_url=mock_url(), api_key=None, accounts=accounts)
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(50)])

    async def main() -> RunStats:
        transport = Route([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)])
        return await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=transport)

    stats = run_virtual(main())
    assert exit_code(stats) == 3 and stats.stop_reason is not None and "quota" in stats.stop_reason
    assert not (tmp_path / "results.jsonl").exists(), "nothing recorded (no file left): a rerun with quota sends every line"
    assert len(stats.dropped_accounts) == 1  # one dropped, then the last one stopped the run
    assert server_a.record.count(429) + server_b.record.count(429) <= 4


def test_keys_appear_in_no_log_row_summary_or_lane(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_a = MockApi(MockConfig(requests_per_minute=600, api_key=KEY_A, faults={"500": 0.5}, **LATENCY))
    server_b = MockApi(MockConfig(requests_per_minute=600, api_key="not KEY_B", **LATENCY))
    accounts = (Account("org-a", api_key=KEY_A, headers={"OpenAI-Organization": "org-secretish-a"}), Account("org-b", api_key=KEY_B))
    settings = Settings(request_url=mock_url(), api_key=None, accounts=accounts, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        _, stats, rows = run(tmp_path, settings, [chat_request(i) for i in range(60)], Route([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)]))
    record = summary_record(stats, exit_code=exit_code(stats), exit_meaning="", given=settings.limits)
    lanes = Lanes(settings, make_limiter=lambda account, model, limits: InProcessLimiter(limits), clock=_clock())
    texts = [
        caplog.text, format_summary(stats), json.dumps(record), repr(stats), repr(settings),
        repr(lanes.lane(accounts[0], "gpt-4o-mini")), repr(accounts),
    ]
    for text in texts:
        for secret in (KEY_A, KEY_B, "org-secretish-a"):
            assert secret not in text
    assert stats.failed > 0, "the faults made failure rows, with their error bodies, and those too hold no key"


def _clock() -> Any:
    from rate_limited_processor.base.clock import Clock

    return Clock(now=lambda: 0.0)


def test_a_limit_for_the_run_caps_every_account_and_the_request_goes_where_it_can_go_soonest() -> None:
    accounts = (Account("slow", limits=Limits(60, None)), Account("fast", limits=Limits(6_000, None)))
    settings = Settings(request_url=mock_url(), api_key=None, limits=Limits(600, None), accounts=accounts)
    now = [0.0]
    lanes = Lanes(settings, make_limiter=lambda account, model, limits: InProcessLimiter(limits, clock=lambda: now[0]), clock=_clock())
    assert lanes.lane(accounts[0], "m").applied.requests_per_minute == 60  # its own limit is lower
    assert lanes.lane(accounts[1], "m").applied.requests_per_minute == 600  # the run's caps it
    # Both buckets start empty: the faster account has room for a request sooner (0.1 s against 1 s).
    assert lanes.choose("m", tokens=10).account.name == "fast"
    now[0] = 5.0  # both full now: the same wait (none), so the lighter load per unit of rate wins
    lanes.lane(accounts[1], "m").in_flight = 20
    assert lanes.choose("m", tokens=10).account.name == "slow"
    lanes.drop("slow", "HTTP 401")
    assert lanes.choose("m", tokens=10).account.name == "fast" and lanes.accounts_left == 1


def test_while_the_run_goes_the_pace_is_held_against_every_lanes_limits_added_up() -> None:
    """The progress bar and status line compare the run's pace, all lanes together, with `stats.limits`."""
    accounts, server_a, server_b = two_accounts(Limits(600, None), Limits(1_200, None))
    seen: list[float | None] = []

    class Watching(Route):
        async def send(self, request: TransportRequest) -> TransportResponse:
            seen.append(processor.stats.limits.requests_per_minute)
            return await super().send(request)

    transport = Watching([(with_key(KEY_A), server_a), (with_key(KEY_B), server_b)])
    processor = Processor(Settings(request_url=mock_url(), api_key=None, accounts=accounts), transport=transport)

    async def main() -> int:
        return sum([result.succeeded async for result in processor.process([chat_request(i) for i in range(90)])])

    assert run_virtual(main()) == 90
    assert set(seen) == {1_800}, "from the first send on: the two accounts' limits added up"
    ended = processor.stats.finished_at
    assert ended is not None and "/1,800 RPM" in bar_postfix(processor.stats, ended)


# -- a bucket per model ------------------------------------------------------------------------------------


def test_two_models_in_one_file_each_go_at_their_own_limit_learned_from_their_own_headers(tmp_path: Path) -> None:
    slow = MockApi(MockConfig(requests_per_minute=600, **LATENCY))
    fast = MockApi(MockConfig(requests_per_minute=1_800, **LATENCY))
    lines = []
    for i in range(1_200):
        line = chat_request(i)
        line["model"] = "slow-model" if i % 2 else "fast-model"
        lines.append(line)
    settings = Settings(request_url=mock_url(), api_key=None, token_encoding_name="cl100k_base")
    elapsed, stats, _ = run(tmp_path, settings, lines, Route([(with_model("slow-model"), slow), (with_model("fast-model"), fast)]))
    ideal = 600 / (600 / 60)  # the slower model's 600 requests at its 600 RPM
    assert elapsed <= 1.10 * ideal, f"{elapsed:.1f}s against the slower model's ideal of {ideal:.0f}s"
    assert slow.record.count(429) + fast.record.count(429) <= 0.01 * len(lines)
    learned = {lane.model: lane.learned.requests_per_minute for lane in stats.lanes}
    assert learned == {"slow-model": 600, "fast-model": 1_800}


# -- Anthropic ---------------------------------------------------------------------------------------------

ANTHROPIC_KEY = "sk-ant-api03-0123456789abcdefghij"
ANTHROPIC_LIMITS: dict[str, Any] = {"requests_per_minute": 4_000, "tokens_per_minute": 200_000, "output_tokens_per_minute": 8_000}


def claude_request(i: int) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 400,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}],
        "metadata": {"id": i},
    }


def anthropic_server(**extra: Any) -> MockApi:
    # It counts input tokens with a real tokenizer; the client can only approximate Claude's.
    return MockApi(MockConfig(**ANTHROPIC_LIMITS, output_tokens=40, api_key=ANTHROPIC_KEY, token_encoding_name="cl100k_base", **LATENCY, **extra))


@pytest.mark.parametrize(
    ("told", "most_time"),
    [(True, 1.10), (False, 1.20)],
    ids=["told the limits", "limits learned"],
)
def test_anthropic_output_tokens_are_reserved_at_max_tokens_and_refunded_to_what_the_answer_used(tmp_path: Path, told: bool, most_time: float) -> None:
    server = anthropic_server()
    limits = Limits(4_000, 200_000, output_tokens_per_minute=8_000) if told else Limits(None, None)
    settings = Settings(request_url="https://api.anthropic.com/v1/messages", api_key=ANTHROPIC_KEY, limits=limits)
    n = 400
    elapsed, stats, rows = run(tmp_path, settings, [claude_request(i) for i in range(n)], MockTransport(server))
    ideal = n * 40 / 8_000 * 60  # on the output tokens the answers used: 200 a minute, 120 s
    assert elapsed <= most_time * ideal, f"{elapsed:.1f}s against an ideal of {ideal:.0f}s"
    assert server.record.count(429) <= 0.01 * n
    assert stats.succeeded == n and server.record.count(401) == 0, "the key went as x-api-key"
    assert rows[0][1]["type"] == "message" and rows[0][1]["usage"]["output_tokens"] == 40
    [lane] = stats.lanes
    assert lane.learned.output_tokens_per_minute == 8_000 and lane.learned.requests_per_minute == 4_000


def test_anthropic_529s_are_retried_with_backoff_and_cost_no_line(tmp_path: Path) -> None:
    server = anthropic_server(faults={"529": 0.1}, seed=3)
    settings = Settings(
        request_url="https://api.anthropic.com/v1/messages", api_key=ANTHROPIC_KEY, limits=Limits(4_000, 200_000, output_tokens_per_minute=8_000),
        retry=RetryPolicy(max_attempts=8, initial_delay=0.05),
    )
    _, stats, _ = run(tmp_path, settings, [claude_request(i) for i in range(200)], MockTransport(server))
    assert server.record.count(529) > 10
    assert stats.succeeded == 200 and exit_code(stats) == 0


def test_anthropic_dollars_are_estimated_at_each_prompt_and_its_max_tokens(tmp_path: Path) -> None:
    """Anthropic is charged its prompt alone against the input-token limit: the dollars' prompt is all of that
    charge, not the charge less max_tokens (as it is for OpenAI, whose charge holds the completion budget)."""
    from rate_limited_processor.core.costs import PriceBook
    from rate_limited_processor.providers.endpoints import Endpoint
    from rate_limited_processor.providers.token_estimation import TokenEstimator

    requests = [claude_request(i) for i in range(20)]
    limits = Limits(4_000, 200_000, output_tokens_per_minute=80_000)
    settings = Settings(request_url="https://api.anthropic.com/v1/messages", api_key=ANTHROPIC_KEY, limits=limits)
    _, stats, _ = run(tmp_path, settings, requests, MockTransport(anthropic_server()))
    bodies = [{key: value for key, value in request.items() if key != "metadata"} for request in requests]
    prompts = sum(TokenEstimator(warn=lambda note: None).prompt_tokens(Endpoint.MESSAGES, body) for body in bodies)
    [estimated] = stats.estimated_cost.priced(PriceBook()).by_model
    assert stats.succeeded == 20 and (estimated.input_tokens, estimated.output_tokens) == (prompts, sum(body["max_tokens"] for body in bodies))


def test_anthropic_batch_lines_naming_v1_messages_go_to_anthropic_with_its_headers(tmp_path: Path) -> None:
    server = anthropic_server()
    lines = [
        {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/messages", "body": {k: v for k, v in claude_request(i).items() if k != "metadata"}}
        for i in range(20)
    ]
    settings = Settings(request_url="https://api.anthropic.com/v1", api_key=ANTHROPIC_KEY)
    input_path = write_jsonl(tmp_path / "batch.jsonl", lines)

    async def main() -> RunStats:
        return await run_file_job(settings, input_path, tmp_path / "out.jsonl", show_progress=False, transport=MockTransport(server))

    stats = run_virtual(main())
    assert stats.succeeded == 20 and server.record.count(200) == 20
    rows = read_rows(tmp_path / "out.jsonl")
    assert sorted(row["custom_id"] for row in rows) == sorted(f"q-{i}" for i in range(20))


def test_an_anthropic_429_names_its_limit_and_says_when_to_come_back() -> None:
    from rate_limited_processor.core.retry_policy import HTTPOutcome, Verdict, classify

    message = "This request would exceed the rate limit for your organization of 8,000 output tokens per minute."
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    decision = classify(HTTPOutcome(429, {"retry-after": "3"}, body))
    assert decision.verdict is Verdict.RETRY and decision.rate_limited and decision.on_output_tokens and decision.retry_after == 3
    overloaded = classify(HTTPOutcome(529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert overloaded.verdict is Verdict.RETRY and not overloaded.rate_limited
    low_credit = {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API."}}
    assert classify(HTTPOutcome(400, body=low_credit)).verdict is Verdict.STOP_RUN


# -- the accounts file -------------------------------------------------------------------------------------


def test_an_accounts_file_reads_keys_from_the_environment_and_its_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_FOR_A", KEY_A)
    path = tmp_path / "accounts.jsonl"
    path.write_text(
        "# two organisations\n"
        '{"name": "org-a", "api_key_env": "KEY_FOR_A", "headers": {"OpenAI-Organization": "org-a"}, '
        '"max_requests_per_minute": 600, "max_tokens_per_minute": 100000}\n'
        "\n"
        f'{{"name": "org-b", "api_key": "{KEY_B}", "max_output_tokens_per_minute": 8000}}\n'
    )
    a, b = read_accounts(path)
    assert a.key is not None and a.key.reveal() == KEY_A and a.limits == Limits(600, 100_000)
    assert b.key is not None and b.key.reveal() == KEY_B and b.limits.output_tokens_per_minute == 8_000 and b.limits.requests_per_minute is None
    assert KEY_A not in repr(a) and KEY_B not in repr(b)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"name": "a", "api_key_env": "NOT_SET_ANYWHERE_RLP"}', "line 1: account 'a': the environment variable NOT_SET_ANYWHERE_RLP is not set"),
        ('{"name": "a", "max_request_per_minute": 5}', "line 1: unknown field 'max_request_per_minute'; did you mean 'max_requests_per_minute'?"),
        ('{"name": "a", "max_requests_per_minute": -5}', "line 1: 'max_requests_per_minute' must be a positive number"),
        ('{"name": "a", "api_key": 12345678}', "line 1: 'api_key' must be a string"),
        (f'{{"name": "a", "api_key": "Bearer {KEY_A}"}}', "starts with 'Bearer '"),
        ('{"name": "a"', "line 1: not valid JSON"),
        ("[" * 100_000, "line 1: nested deeper than"),
        ('{"name": "a"}\n{"name": "a"}', "account names must be unique; repeated: 'a'"),
    ],
)
def test_a_wrong_accounts_file_is_refused_naming_the_line_and_never_the_key(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "accounts.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as raised:
        read_accounts(path)
    assert says in str(raised.value)
    assert KEY_A not in str(raised.value) and "12345678" not in str(raised.value)


def test_summary_lists_each_lane_only_when_there_is_more_than_one() -> None:
    from rate_limited_processor.engine.lanes import LaneReport

    stats = RunStats(Limits(None, None), started_at=0.0, finished_at=60.0)
    stats.lanes = [LaneReport("org-a", "gpt-4o-mini", 100, 99, 1, Limits(600, 60_000), None)]
    assert "lanes" not in format_summary(stats)
    stats.lanes.append(LaneReport("org-b", "gpt-4o-mini", 300, 300, 0, Limits(1_200, None), 1_150.0))
    summary = format_summary(stats)
    assert "org-a/gpt-4o-mini 100 sent (25%), 99 succeeded, 1 rate-limit 429s; 600 RPM, 60,000 TPM" in summary.replace("  ", " ")
    assert "its limit appears to be about 1,150 RPM" in summary
    record = summary_record(stats, exit_code=0, exit_meaning="", given=Limits(None, None))
    assert [lane["account"] for lane in record["lanes"]] == ["org-a", "org-b"] and record["lanes"][1]["learned"]["requests_per_minute"] == 1_200


# -- the command, over real HTTP ---------------------------------------------------------------------------


async def test_the_command_spreads_a_file_over_the_accounts_of_an_accounts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rate_limited_processor.mock_server import MockServer
    from tests.helpers import run_cli

    monkeypatch.setenv("RLP_TEST_KEY_A", KEY_A)
    monkeypatch.setenv("RLP_TEST_KEY_B", KEY_B)
    accounts = write_jsonl(tmp_path / "accounts.jsonl", [
        {"name": "org-a", "api_key_env": "RLP_TEST_KEY_A", "max_requests_per_minute": 3_000},
        {"name": "org-b", "api_key_env": "RLP_TEST_KEY_B", "max_requests_per_minute": 6_000},
    ])
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(150)])
    summary_path = tmp_path / "summary.json"
    async with MockServer(MockConfig()) as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(input_path), "--request_url", server.url("chat/completions"),
            "--accounts", str(accounts), "--token_encoding_name", "cl100k_base", "--summary_json", str(summary_path),
        )
    assert code == 0, stderr
    assert sorted(row[2]["id"] for row in read_rows(tmp_path / "questions_results.jsonl")) == list(range(150))
    summary = json.loads(summary_path.read_text())
    sent = {lane["account"]: lane["sent"] for lane in summary["lanes"]}
    assert sent["org-a"] + sent["org-b"] == 150 and sent["org-b"] > sent["org-a"] > 0
    assert "lanes" in stderr and KEY_A not in stderr + summary_path.read_text() and KEY_B not in stderr


async def test_a_wrong_accounts_file_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    accounts = write_jsonl(tmp_path / "accounts.jsonl", [{"name": "org-a"}, {"name": "org-b", "api_key_env": "RLP_TEST_NOT_SET_ANYWHERE"}])
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(0)])
    code, _, stderr = await run_cli("--requests_filepath", str(input_path), "--request_url", "http://127.0.0.1:9/v1/chat/completions",
                                    "--accounts", str(accounts))
    assert code == 2
    assert f"--accounts: {accounts}, line 2: account 'org-b': the environment variable RLP_TEST_NOT_SET_ANYWHERE is not set" in stderr
    assert not (tmp_path / "questions_results.jsonl").exists()


async def test_the_command_speaks_anthropic_at_a_v1_messages_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rate_limited_processor.mock_server import MockServer
    from tests.helpers import run_cli

    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lines = [claude_request(i) for i in range(30)]
    lines.append({"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "no max_tokens"}], "metadata": {"id": 30}})
    input_path = write_jsonl(tmp_path / "claude.jsonl", lines)
    mock = MockConfig(requests_per_minute=6_000, tokens_per_minute=1_000_000, output_tokens_per_minute=600_000, api_key=ANTHROPIC_KEY)
    async with MockServer(mock) as server:
        code, _, stderr = await run_cli("--requests_filepath", str(input_path), "--request_url", server.url("messages"))
    assert code == 1, stderr  # the line without max_tokens is recorded as invalid, not sent
    rows = read_rows(tmp_path / "claude_results.jsonl")
    assert sorted(row[-1]["id"] for row in rows) == list(range(31))
    answers = [row[1] for row in rows if isinstance(row[1], dict)]
    assert len(answers) == 30 and all(answer["type"] == "message" for answer in answers)
    assert "max_tokens" in stderr and "invalid input  1" in stderr
    assert "Claude's tokenizer is not public" in stderr and ANTHROPIC_KEY not in stderr


# -- the pieces, pure --------------------------------------------------------------------------------------


def test_anthropic_gets_its_key_as_x_api_key_with_its_version_and_openai_as_a_bearer() -> None:
    from rate_limited_processor.config.credentials import ANTHROPIC_VERSION, headers_for
    from rate_limited_processor.config.settings import Secret

    anthropic = headers_for("https://api.anthropic.com/v1/messages", Secret(ANTHROPIC_KEY), {"X-Trace": "1"})
    assert dict(anthropic) == {"x-api-key": ANTHROPIC_KEY, "anthropic-version": ANTHROPIC_VERSION, "X-Trace": "1"}
    assert ANTHROPIC_KEY not in repr(anthropic)
    assert dict(headers_for("https://api.anthropic.com/v1", Secret(ANTHROPIC_KEY), {}))["x-api-key"] == ANTHROPIC_KEY  # a Batch root
    assert dict(headers_for("https://api.openai.com/v1/chat/completions", Secret(KEY_A), {})) == {"Authorization": f"Bearer {KEY_A}"}


def test_the_key_variable_follows_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY_A)
    anthropic = Settings(request_url="https://api.anthropic.com/v1/messages")
    openai = Settings(request_url="https://api.openai.com/v1/chat/completions")
    assert anthropic.key is not None and anthropic.key.reveal() == ANTHROPIC_KEY
    assert openai.key is not None and openai.key.reveal() == KEY_A


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, "missing required field 'model'"),
        ({"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}]}, "field 'max_tokens' is required"),
        ({"model": "claude-3-5-haiku-latest", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "must be a positive integer"),
        ({"model": "claude-3-5-haiku-latest", "max_tokens": True, "messages": [{"role": "user", "content": "hi"}]}, "must be a positive integer"),
        ({"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": []}, "field 'messages' must be a non-empty list"),
    ],
)
def test_a_messages_line_without_model_max_tokens_or_messages_is_refused(body: dict[str, Any], says: str) -> None:
    from rate_limited_processor.providers.endpoints import Endpoint, missing_field_reason

    reason = missing_field_reason(Endpoint.MESSAGES, body)
    assert reason is not None and says in reason


def test_a_refusal_of_the_whole_account_drops_it_while_another_is_left() -> None:
    from rate_limited_processor.core.decisions import DropAccount, JobState, RunState, StopRun, next_step
    from rate_limited_processor.core.retry_policy import Decision, RetryPolicy, Verdict

    refused = Decision(Verdict.STOP_RUN, "HTTP 401 invalid_api_key")
    quota_for_hours = Decision(Verdict.RETRY, "HTTP 429 tokens per day", retry_after=7_200, rate_limited=True)
    policy, job = RetryPolicy(), JobState(attempts=1)
    assert next_step(refused, job=job, run=RunState(accounts_left=2), policy=policy) == DropAccount("HTTP 401 invalid_api_key")
    assert isinstance(next_step(quota_for_hours, job=job, run=RunState(accounts_left=2), policy=policy), DropAccount)
    assert isinstance(next_step(refused, job=job, run=RunState(accounts_left=1), policy=policy), StopRun)
    assert isinstance(next_step(refused, job=job, run=RunState(accounts_left=2, stopping=True), policy=policy), StopRun)
