"""Closed-loop rate control: the pure controller, the decision step's rules, and whole runs against servers
that state nothing (no x-ratelimit headers, no hint, an HTML 429, a useless hint), in virtual time.

The judges are the project's mock in its "silent" and "html" styles: it enforces its limit with a token
bucket and tells the client nothing it could pace by. The same runs against nginx's limit_req, a limiter
nobody here wrote, are in test_nginx_gateway.py.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Limits, NoAnswer, RetryPolicy, Settings, TransportError, TransportRequest, TransportResponse, run_file_job
from rate_limited_processor.core.decisions import Fail, JobState, Retry, RunState, StopRun, next_step
from rate_limited_processor.core.rate_control import Answer, RateController
from rate_limited_processor.core.retry_policy import Decision, Verdict
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.ui.summary import format_summary
from tests.helpers import chat_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

UNKNOWN = Limits(None, None)

# -- the controller, pure --------------------------------------------------------------------------------


def drive(control: RateController, *, server_per_second: float, seconds: float, start: float = 0.0, latency: float = 0.1) -> tuple[int, int]:
    """Send at whatever rate the controller allows to a server admitting `server_per_second` (a token bucket
    of one second's capacity, starting full); answers come back after `latency` (refusals at once).
    Returns (admitted, refused)."""
    level, capacity = server_per_second, server_per_second
    now, updated = start, start
    pending: list[tuple[float, float, bool]] = []  # (answer time, sent at, admitted)
    admitted = refused = 0
    next_send = start
    while now < start + seconds:
        rate = (control.limits(UNKNOWN, now).requests_per_minute or math.inf) / 60
        gap = 1 / rate if math.isfinite(rate) else 0.001
        now = max(now, next_send)
        for answer_at, sent_at, ok in sorted(a for a in pending if a[0] <= now):
            pending.remove((answer_at, sent_at, ok))
            control.answered(Answer(sent_at, 10, rate_limited=not ok), answer_at)
        level = min(capacity, level + (now - updated) * server_per_second)
        updated = now
        control.sent(now)
        if level >= 1:
            level -= 1
            admitted += 1
            pending.append((now + latency, now, True))
        else:
            refused += 1
            pending.append((now + 0.001, now, False))
        next_send = now + gap
    return admitted, refused


def test_slow_start_doubles_from_a_round_trips_worth_until_the_first_429_halves_it() -> None:
    control = RateController(requests_ceiling_known=False, now=0.0)
    control.sent(0.0)
    control.answered(Answer(0.0, 10), now=0.1)  # a round trip of 0.1 s: start at 4 per round trip = 40/s
    assert control.limits(UNKNOWN, 0.1).requests_per_minute == pytest.approx(40 * 60)
    for i in range(1, 201):  # sending at the cap for 0.4 s, the limits asked for every 10 ms
        control.sent(0.1 + i * 0.002)
        if i % 5 == 0:
            control.limits(UNKNOWN, 0.1 + i * 0.002)
    rate = control.limits(UNKNOWN, 0.5).requests_per_minute
    # About one doubling per 0.1 s round trip (growth waits until half the cap has been used in the last second).
    assert rate is not None and 40 * 60 * 2**3 <= rate <= 40 * 60 * 2**4 * 1.01
    control.answered(Answer(0.49, 10, rate_limited=True), now=0.5)
    assert control.limits(UNKNOWN, 0.5).requests_per_minute == pytest.approx(rate / 2)


def test_a_limit_learned_mid_run_ends_slow_start_and_then_the_ceiling_alone_applies() -> None:
    control = RateController(requests_ceiling_known=False, now=0.0)
    assert control.limits(UNKNOWN, 0.0) is UNKNOWN
    control.sent(0.0)
    control.answered(Answer(0.0, 10), now=0.1)
    assert control.limits(UNKNOWN, 0.1).requests_per_minute == pytest.approx(40 * 60)
    told = Limits(6_000, None)  # the API's headers state a limit
    assert control.limits(told, 0.2) is told
    control.sent(0.2)
    control.answered(Answer(0.2, 10), now=0.3)
    assert control.limits(told, 0.3) is told


def test_against_a_server_that_states_nothing_the_rate_settles_just_below_its_limit() -> None:
    control = RateController(requests_ceiling_known=False, now=0.0)
    admitted, refused = drive(control, server_per_second=50, seconds=60)
    found = control.report().found_requests_per_minute
    assert found is not None and found == pytest.approx(3_000, rel=0.1)
    assert admitted >= 0.95 * 50 * 60  # the limit is used
    assert refused <= 0.02 * admitted  # and rarely overrun


def test_told_ten_times_too_much_one_storm_is_cut_in_a_few_round_trips() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    ceiling = Limits(6_000, None)  # 100/s, against a server admitting 10/s

    def limits(now: float) -> float:
        return (control.limits(ceiling, now).requests_per_minute or 0) / 60

    admitted = refused = 0
    level, now, updated = 10.0, 0.0, 0.0
    pending: list[tuple[float, float, bool]] = []
    while now < 30:
        for answer in sorted(a for a in pending if a[0] <= now):
            pending.remove(answer)
            control.answered(Answer(answer[1], 10, rate_limited=not answer[2]), answer[0])
        level, updated = min(10.0, level + (now - updated) * 10), now
        control.sent(now)
        ok = level >= 1
        level -= ok
        admitted, refused = admitted + ok, refused + (not ok)
        pending.append((now + (0.2 if ok else 0.001), now, ok))
        now += 1 / limits(now)
    assert refused <= 0.05 * admitted, (admitted, refused)
    assert 8 <= limits(now) <= 11  # about the server's 10/s


def test_a_storm_already_on_the_wire_cuts_once_and_refusals_of_requests_sent_before_the_cut_cut_nothing() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    ceiling = Limits(600, None)
    for i in range(20):
        control.sent(i * 0.1)
        control.answered(Answer(i * 0.1, 10), now=i * 0.1 + 0.05)
    for i in range(5):  # five refusals of requests all sent before the first of them came back
        control.sent(2.0 + i * 0.01)
    control.answered(Answer(2.0, 10, rate_limited=True), now=2.06)
    after_first = control.limits(ceiling, 2.06).requests_per_minute
    for i in range(1, 5):
        control.answered(Answer(2.0 + i * 0.01, 10, rate_limited=True), now=2.06 + i * 0.001)
    assert control.cuts == 1
    assert control.limits(ceiling, 2.1).requests_per_minute == after_first


def test_the_rate_grows_by_answers_not_by_time_and_not_while_it_goes_unused() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    ceiling = Limits(6_000, None)
    for i in range(40):
        control.sent(i * 0.01)
        control.answered(Answer(i * 0.01, 10), now=i * 0.01 + 0.005)
    control.answered(Answer(0.4, 10, rate_limited=True), now=0.41)  # a lone 429 after a calm spell
    cut = control.limits(ceiling, 0.41).requests_per_minute
    assert cut is not None and cut < 6_000
    assert control.limits(ceiling, 100.0).requests_per_minute == cut  # time alone grows nothing
    for i in range(50):  # a slow source: 1 request a second, far below the cap
        control.sent(100 + i)
        control.answered(Answer(100 + i, 10), now=100 + i + 0.005)
    assert control.limits(ceiling, 150.0).requests_per_minute == cut
    for i in range(50):  # sending at the cap: each admitted answer raises it a little
        at = 150 + i * 60 / cut
        control.sent(at)
        control.answered(Answer(at, 10), now=at + 0.005)
    grown = control.limits(ceiling, 160.0).requests_per_minute
    assert grown is not None and cut < grown < 6_000


def test_a_capped_rate_still_follows_a_lower_ceiling_told_later() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    for i in range(40):
        control.sent(i * 0.01)
        control.answered(Answer(i * 0.01, 10), now=i * 0.01 + 0.005)
    control.answered(Answer(0.4, 10, rate_limited=True), now=0.41)  # cut below the 6,000 RPM told
    cut = control.limits(Limits(6_000, None), 0.41).requests_per_minute
    assert cut is not None and 100 < cut < 6_000
    assert control.limits(Limits(6_000, None), 0.42).requests_per_minute == cut
    lower = Limits(100, 50_000)  # the API's headers state less than our cap
    assert (control.limits(lower, 0.43).requests_per_minute, control.limits(lower, 0.43).tokens_per_minute) == (100, 50_000)


def test_a_hintless_pause_is_about_one_request_interval_and_doubles_per_round_of_refusals() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    ceiling = Limits(600, None)
    for i in range(30):
        control.sent(i * 0.1)
        control.answered(Answer(i * 0.1, 10), now=i * 0.1 + 0.05)
    control.answered(Answer(3.0, 10, rate_limited=True), now=3.01)
    rate = (control.limits(ceiling, 3.01).requests_per_minute or 0) / 60
    first = control.hintless_pause()
    assert first == pytest.approx(1 / rate)
    control.paused(3.01, 3.01 + first)
    control.answered(Answer(3.01 + first + 0.01, 10, rate_limited=True), now=3.2)  # refused again after the pause
    assert control.hintless_pause() == pytest.approx(2 * 1 / ((control.limits(ceiling, 3.2).requests_per_minute or 0) / 60))
    control.answered(Answer(3.3, 10), now=3.4)  # admitted, sent after the last refusal: the storm is over
    assert control.hintless_pause() == pytest.approx(1 / ((control.limits(ceiling, 3.4).requests_per_minute or 0) / 60))


def test_a_429_naming_the_token_limit_cuts_tokens_and_leaves_requests_alone() -> None:
    control = RateController(requests_ceiling_known=True, now=0.0)
    ceiling = Limits(6_000, 600_000)
    control.limits(ceiling, 0.0)
    for i in range(40):  # 10 requests of 1,000 tokens a second: the 600,000 TPM ceiling
        control.sent(i * 0.1)
        control.answered(Answer(i * 0.1, 1_000), now=i * 0.1 + 0.05)
    control.answered(Answer(4.0, 1_000, rate_limited=True, on_tokens=True), now=4.01)
    limits = control.limits(ceiling, 4.01)
    assert limits.requests_per_minute == 6_000
    assert limits.tokens_per_minute is not None and limits.tokens_per_minute < 600_000


# -- the decision step, pure ------------------------------------------------------------------------------

RATE_LIMITED = Decision(Verdict.RETRY, "HTTP 429", rate_limited=True)
REFUSED = Decision(Verdict.RETRY, "ClientConnectorError: Connect call failed", about_the_endpoint=True)
NOT_FOUND = Decision(Verdict.FAIL, "HTTP 404: Invalid URL", about_the_endpoint=True)
POLICY = RetryPolicy(max_attempts=2)


def test_a_rate_limit_429_costs_no_attempt_only_time() -> None:
    step = next_step(RATE_LIMITED, job=JobState(attempts=2), run=RunState(hintless_pause=0.3), policy=POLICY)
    assert step == Retry(0.3, pause_everyone=0.3, rate_limited=True)  # past max_attempts, still retried
    hinted = next_step(Decision(Verdict.RETRY, "HTTP 429", retry_after=1.5, rate_limited=True), job=JobState(attempts=1), run=RunState(), policy=POLICY)
    assert hinted == Retry(1.5, pause_everyone=1.5, rate_limited=True)  # the server's own hint, obeyed
    waited = next_step(RATE_LIMITED, job=JobState(attempts=1, rate_limited_for=901), run=RunState(), policy=POLICY)
    assert isinstance(waited, StopRun) and "waited over 900s" in waited.reason


def test_a_failure_about_the_endpoint_retries_then_stops_the_run_while_nothing_has_succeeded() -> None:
    fresh = RunState(any_succeeded=False)
    first = next_step(NOT_FOUND, job=JobState(attempts=1, url="http://h/v2/chat/completions"), run=fresh, policy=POLICY, random=lambda: 0.0)
    assert first == Retry(0.5)  # a 404 too: the usual backoff, in case the server is still coming up
    last = next_step(REFUSED, job=JobState(attempts=2, url="http://h/v1/chat/completions"), run=fresh, policy=POLICY)
    assert isinstance(last, StopRun) and "http://h/v1/chat/completions" in last.reason and "none succeeded" in last.reason
    # Once something has succeeded, the same answers are about the line.
    assert next_step(NOT_FOUND, job=JobState(attempts=1), run=RunState(any_succeeded=True), policy=POLICY) == Fail()
    assert next_step(REFUSED, job=JobState(attempts=2), run=RunState(any_succeeded=True), policy=POLICY) == Fail()


# -- whole runs against servers that state nothing ---------------------------------------------------------

TRUE_RPM = 600
N = 600
IDEAL = N / (TRUE_RPM / 60)  # 60 s


def run_job(tmp_path: Path, mock: MockConfig, limits: Limits, *, n: int = N, max_attempts: int = 2) -> tuple[float, Any, MockApi]:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    api = MockApi(mock)
    settings = Settings(request_url=mock_url(), api_key=None, limits=limits, retry=RetryPolicy(max_attempts=max_attempts), request_timeout=60)

    async def main() -> tuple[float, Any]:
        started = virtual_time()
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=MockTransport(api))
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(main())
    rows = read_rows(tmp_path / "results.jsonl")
    assert sorted(row[2]["id"] for row in rows) == list(range(n)), "every line exactly once"
    assert all(isinstance(row[1], dict) for row in rows), "no failure rows"
    assert stats.rate_limit_errors == api.record.count(429) > 0
    return elapsed, stats, api


STRICT: dict[str, Any] = {"requests_per_minute": TRUE_RPM, "latency": 0.2, "latency_jitter": 0.2}


@pytest.mark.parametrize(
    ("name", "mock", "limits", "n", "most_time", "most_429s"),
    [
        ("no limits, no hints, told 10x", MockConfig(**STRICT, rate_limit_style="silent"), Limits(6_000, math.inf), N, 1.15, 0.03),
        ("no limits, no hints, told nothing", MockConfig(**STRICT, rate_limit_style="silent"), UNKNOWN, N, 1.30, 0.05),
        ("hints of 3ms, told 1e9", MockConfig(**STRICT, ratelimit_headers=False, rate_limit_hint=0.003), Limits(1e9, math.inf), 2 * N, 1.20, 0.05),
        ("an HTML 429 gateway, told 3x", MockConfig(**STRICT, rate_limit_style="html", burst_seconds=0.6), Limits(1_800, math.inf), N, 1.15, 0.03),
        ("an HTML 429 gateway, told 10x", MockConfig(**STRICT, rate_limit_style="html", burst_seconds=0.6), Limits(6_000, math.inf), N, 1.20, 0.03),
    ],
)
def test_wrong_missing_and_lying_limits_cost_little_time_few_429s_and_no_request(
    tmp_path: Path, name: str, mock: MockConfig, limits: Limits, n: int, most_time: float, most_429s: float
) -> None:
    elapsed, stats, api = run_job(tmp_path, mock, limits, n=n)
    ideal = n / (TRUE_RPM / 60)
    assert elapsed <= most_time * ideal, f"{name}: {elapsed:.1f}s against an ideal of {ideal:.0f}s"
    assert api.record.count(429) <= most_429s * n, f"{name}: {api.record.count(429)} 429s for {n} requests"
    # The summary says where the limit appears to be, for next time.
    found = stats.control.found_requests_per_minute
    assert found is not None and 0.9 * TRUE_RPM <= found <= 1.1 * TRUE_RPM
    assert "the server's limit appears to be about" in format_summary(stats)


def test_told_the_truth_the_control_loop_stays_out_of_the_way(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(N)])
    api = MockApi(MockConfig(**STRICT))

    async def main() -> tuple[float, Any]:
        settings = Settings(request_url=mock_url(), api_key=None, limits=Limits(TRUE_RPM, math.inf))
        started = virtual_time()
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=MockTransport(api))
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(main())
    assert elapsed <= 1.05 * IDEAL and api.record.count(429) <= 0.01 * N
    assert stats.succeeded == N and stats.control.cuts == api.record.count(429)


# -- run-wide failures ---------------------------------------------------------------------------------


def refused(request: TransportRequest) -> TransportResponse:
    raise TransportError(NoAnswer.CONNECT, "ClientConnectorError: Cannot connect to host mock.invalid:80 [Connect call failed]")


def test_nothing_listening_stops_the_run_within_20_seconds_with_no_row_and_few_attempts(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(3_000)])

    async def main() -> tuple[float, Any]:
        started = virtual_time()
        stats = await run_file_job(Settings(request_url=mock_url(), api_key=None), input_path, tmp_path / "out.jsonl", show_progress=False, transport=refused)
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(main())
    assert stats.stop_reason is not None and "Cannot connect" in stats.stop_reason and mock_url() in stats.stop_reason
    assert elapsed <= 20 and not (tmp_path / "out.jsonl").exists()  # no row: no file left behind
    assert stats.attempts <= 10  # one request at a time while nothing works: not 15,000 attempts


def test_every_request_404ing_stops_the_run_and_the_rerun_at_the_right_url_writes_every_line_once(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(300)])
    output_path = tmp_path / "out.jsonl"
    api = MockApi()  # serves /v1/...: "/v2/chat/completions" is a path that does not exist

    async def run(url: str) -> tuple[float, Any]:
        started = virtual_time()
        settings = Settings(request_url=url, api_key=None, limits=Limits(6_000, math.inf))
        stats = await run_file_job(settings, input_path, output_path, show_progress=False, transport=MockTransport(api))
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(run("http://mock.invalid/v2/chat/completions"))
    assert stats.stop_reason is not None and "HTTP 404" in stats.stop_reason and "/v2/chat/completions" in stats.stop_reason
    assert elapsed <= 20 and not output_path.exists()  # no row: no file left behind
    _, rerun = run_virtual(run(mock_url()))
    assert rerun.stop_reason is None and rerun.succeeded == 300
    assert sorted(row[2]["id"] for row in read_rows(output_path)) == list(range(300))


def test_a_server_that_comes_up_a_few_seconds_late_does_not_stop_the_run(tmp_path: Path) -> None:
    api = MockApi()
    transport = MockTransport(api)
    up_at: list[float] = []

    async def late(request: TransportRequest) -> TransportResponse:
        if not up_at:
            up_at.append(virtual_time() + 4.0)
        if virtual_time() < up_at[0]:
            refused(request)
        return await transport.send(request)

    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(50)])
    stats = run_virtual(run_file_job(Settings(request_url=mock_url(), api_key=None), input_path, tmp_path / "out.jsonl", show_progress=False, transport=late))
    assert stats.stop_reason is None and stats.succeeded == 50


def test_a_404_about_one_lines_model_stays_that_lines_failure(tmp_path: Path) -> None:
    def server(request: TransportRequest) -> TransportResponse | dict[str, Any]:
        if request.body["model"] == "gpt-nonexistent":
            return TransportResponse(404, {}, b'{"error": {"message": "The model `gpt-nonexistent` does not exist", "code": "model_not_found"}}')
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}

    lines = [chat_request(i) for i in range(20)]
    lines[0] = {**lines[0], "model": "gpt-nonexistent"}  # the very first line, before anything has succeeded
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    stats = run_virtual(run_file_job(Settings(request_url=mock_url(), api_key=None), input_path, tmp_path / "out.jsonl", show_progress=False, transport=server))
    assert stats.stop_reason is None and (stats.succeeded, stats.failed) == (19, 1)


def test_the_rate_counts_as_used_when_the_last_seconds_sends_reach_half_of_it_whatever_came_before() -> None:
    chance = random.Random(7)
    for _ in range(200):
        control = RateController(requests_ceiling_known=True, now=0.0)
        control._requests.per_second = chance.uniform(1, 60)
        now, sends = 0.0, []
        for _ in range(chance.randrange(0, 120)):
            now += chance.expovariate(chance.uniform(5, 80))
            control.sent(now)
            sends.append(now)
        now += chance.uniform(0, 1.5)
        last_second = sum(at >= now - 1.0 for at in sends)
        assert control._using_the_rate(now) is (last_second >= 0.5 * control._requests.per_second)
