"""Gemini's per-day quota (issue 27): a 429 whose QuotaFailure names a per-day quota ends the run at once (exit 3),
naming the quota and its reset (midnight Pacific), with no failure rows; the rerun after the day turns finishes the rest.

The strict double (`mock_server/gemini.py`) counts requests per Pacific day and answers past it as Gemini does: 429
RESOURCE_EXHAUSTED, a QuotaFailure violation with the per-day quotaId, and a RetryInfo asking for seconds, which,
obeyed alone, would have the run retry all day.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.cli.exits import EXIT_OK, EXIT_STOPPED, exit_code
from rate_limited_processor.core.classification import HTTPOutcome, Verdict, classify
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.mock_server import MockApi, MockConfig, MockServer
from rate_limited_processor.mock_server import gemini as gemini_double
from rate_limited_processor.mock_server.api import MockRequest
from rate_limited_processor.mock_server.transport import MockTransport
from rate_limited_processor.providers import gemini, registry
from rate_limited_processor.providers.endpoints import Endpoint
from tests.helpers import read_rows, run_cli, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

MOCK_URL = "http://mock.invalid/v1beta/models/gemini-2.0-flash:generateContent"
PATH = "/v1beta/models/gemini-2.0-flash:generateContent"
PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
RPM = 600


def gemini_request(i: int) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": f"Question {i}: what is {i} + {i}?"}]}], "generationConfig": {"maxOutputTokens": 8},
            "metadata": {"id": i}}


def resource_exhausted(quota_id: str, value: str | None = "300") -> dict[str, Any]:
    violation: dict[str, Any] = {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": quota_id,
                                 "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"}}
    if value is not None:
        violation["quotaValue"] = value
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"},
    ]}}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------- the provider


def test_a_per_day_quota_is_named_with_its_value_and_its_reset_at_midnight_pacific() -> None:
    # 2026-12-05 17:13 PST: the quota resets at 2026-12-06 00:00 PST, 08:00 UTC.
    said = gemini.quota_exhausted_for_the_day(resource_exhausted(PER_DAY), utc(2026, 12, 6, 1, 13))
    assert said is not None
    assert f"daily quota {PER_DAY} of 300 for gemini-2.0-flash is used up" in said
    assert "midnight Pacific time, 2026-12-06 00:00 PST (2026-12-06 08:00 UTC, in 6:47:00)" in said, said
    assert gemini.quota_exhausted_for_the_day(resource_exhausted(PER_DAY, value=None), utc(2026, 12, 6)) is not None


@pytest.mark.parametrize("quota_id", ["GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "GenerateContentInputTokensPerModelPerMinute-FreeTier"])
def test_a_per_minute_quota_is_not_the_days(quota_id: str) -> None:
    assert gemini.quota_exhausted_for_the_day(resource_exhausted(quota_id), utc(2026, 12, 6)) is None
    bodies: list[Any] = [{"error": {"code": 429, "details": "x"}}, {"error": "x"}, None, [], {"error": {"details": [{"@type": gemini.QUOTA_FAILURE_TYPE}]}}]
    for body in bodies:
        assert gemini.quota_exhausted_for_the_day(body, 0.0) is None


@pytest.mark.parametrize(
    ("now", "reset_utc", "zone_name"),
    [
        (utc(2026, 7, 1, 12), utc(2026, 7, 2, 7), "PDT"),            # summer: midnight PDT is 07:00 UTC
        (utc(2026, 12, 6, 7, 59), utc(2026, 12, 6, 8), "PST"),       # a minute before midnight PST
        (utc(2026, 12, 6, 8), utc(2026, 12, 7, 8), "PST"),           # midnight itself: the next one
        (utc(2026, 3, 8, 5), utc(2026, 3, 8, 8), "PST"),             # the evening before daylight time starts
        (utc(2026, 3, 8, 12), utc(2026, 3, 9, 7), "PDT"),            # its first morning: a 23-hour day
        (utc(2026, 11, 1, 12), utc(2026, 11, 2, 8), "PST"),          # the day it ends: a 25-hour day
    ],
)
def test_the_reset_is_the_next_pacific_midnight_daylight_time_included(now: float, reset_utc: float, zone_name: str) -> None:
    local, in_utc = gemini.daily_reset(now)
    assert in_utc.timestamp() == reset_utc and (local.hour, local.minute, local.tzname()) == (0, 0, zone_name)


def test_without_time_zone_data_the_us_rule_gives_the_same_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {hour: gemini.daily_reset(utc(2025, 1, 1) + hour * 3_600) for hour in range(0, 3 * 366 * 24, 5)}

    def no_data(name: str) -> ZoneInfo:
        raise ZoneInfoNotFoundError(name)

    monkeypatch.setattr(gemini, "ZoneInfo", no_data)
    assert isinstance(gemini._pacific_zone(), type(gemini._US_PACIFIC))
    for hour, (local, in_utc) in expected.items():
        fallback_local, fallback_utc = gemini.daily_reset(utc(2025, 1, 1) + hour * 3_600)
        assert (fallback_utc, fallback_local.tzname(), fallback_local.replace(tzinfo=None)) == (in_utc, local.tzname(), local.replace(tzinfo=None))


def test_a_per_day_429_stops_the_run_a_per_minute_one_is_waited_out() -> None:
    body = resource_exhausted(PER_DAY)
    decision = classify(HTTPOutcome(429, {}, body, json.dumps(body)), endpoint=Endpoint.GENERATE_CONTENT, now=utc(2026, 12, 6, 1, 13))
    assert decision.verdict is Verdict.STOP_RUN and PER_DAY in decision.reason and "midnight Pacific" in decision.reason
    minute = resource_exhausted("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    waited = classify(HTTPOutcome(429, {}, minute), endpoint=Endpoint.GENERATE_CONTENT)
    assert (waited.verdict, waited.rate_limited, waited.retry_after) == (Verdict.RETRY, True, 40.0)


# --------------------------------------------------------------------------------------- the double


def _ask(api: MockApi, i: int) -> Any:
    async def main() -> Any:
        return await api.answer(MockRequest(PATH, json.dumps(gemini_request(i)).encode(), {}))

    return run_virtual(main())


def test_the_double_counts_requests_per_pacific_day_and_answers_past_it_as_gemini_does() -> None:
    wall = [utc(2026, 12, 6, 7, 0)]  # 23:00 PST on the 5th; 07:00 UTC on the 6th already
    api = MockApi(MockConfig(requests_per_day=2), wall=lambda: wall[0])
    assert [_ask(api, i).status for i in range(2)] == [200, 200]
    refused = _ask(api, 2)
    assert refused.status == 429 and "retry-after" not in refused.headers and not registry.states_rate_limits(refused.headers)
    error = refused.json()["error"]
    failure, retry = error["details"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert failure["@type"] == gemini.QUOTA_FAILURE_TYPE and failure["violations"][0]["quotaId"] == gemini_double.PER_DAY_QUOTA_ID
    assert failure["violations"][0]["quotaValue"] == "2" and failure["violations"][0]["quotaDimensions"]["model"] == "gemini-2.0-flash"
    assert retry == {"@type": gemini.RETRY_INFO_TYPE, "retryDelay": "60s"}, "seconds, as Gemini asks even for the day's quota"
    wall[0] = utc(2026, 12, 6, 7, 59, 30)  # 23:59:30 PST: the UTC day turned, the Pacific one has not
    assert _ask(api, 3).status == 429
    wall[0] = utc(2026, 12, 6, 8, 0, 1)  # 00:00:01 PST on the 6th
    assert [_ask(api, i).status for i in range(3, 6)] == [200, 200, 429]
    api.gemini_day.turn_the_day()
    assert _ask(api, 6).status == 200
    assert MockApi(MockConfig()).gemini_day.limit is None and _ask(MockApi(MockConfig()), 0).status == 200
    with pytest.raises(ValueError, match="requests_per_day"):
        MockConfig(requests_per_day=0)


# --------------------------------------------------------------------------------------- the judge


def run(tmp_path: Path, api: MockApi, limits: Limits, n: int) -> tuple[RunStats, float, list[Any]]:
    """One file job in virtual time: its stats, the virtual second it ended at, and the rows in the output."""
    input_path = write_jsonl(tmp_path / "requests.jsonl", [gemini_request(i) for i in range(n)])
    settings = Settings(request_url=MOCK_URL, api_key=None, limits=limits, retry=RetryPolicy(max_attempts=5))

    async def main() -> tuple[RunStats, float]:
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=MockTransport(api))
        return stats, virtual_time()

    stats, ended = run_virtual(main())
    return stats, ended, read_rows(tmp_path / "results.jsonl")


def ran_out_at(api: MockApi, quota: int) -> float:
    """When the day's quota ran out: the first request to arrive after the one that used it up."""
    admitted = [entry.arrived_at for entry in api.record.entries if entry.outcome == 200]
    assert len(admitted) == quota
    return min(entry.arrived_at for entry in api.record.entries if entry.arrived_at > admitted[-1])


@pytest.mark.parametrize("limits", [Limits(RPM, float("inf")), Limits(None, None)], ids=["told 600 RPM", "not told"])
def test_300_a_day_with_500_lines_stops_within_30_s_with_no_failure_rows_and_the_next_day_finishes_them(tmp_path: Path, limits: Limits) -> None:
    api = MockApi(MockConfig(requests_per_minute=RPM, requests_per_day=300, latency=0.5, latency_jitter=1.0))
    stats, ended, rows = run(tmp_path, api, limits, 500)
    stopped_after = ended - ran_out_at(api, 300)
    print(f"stopped {stopped_after:.2f} s (virtual) after the daily quota ran out; {len(api.record.entries)} requests sent")
    assert exit_code(stats) == EXIT_STOPPED and stopped_after <= 30.0
    assert stats.stop_reason is not None and gemini_double.PER_DAY_QUOTA_ID in stats.stop_reason and "of 300" in stats.stop_reason
    assert "resets at midnight Pacific time" in stats.stop_reason and "UTC" in stats.stop_reason
    assert len(rows) == 300 and all("candidates" in row[1] for row in rows), "no failure rows: the rest are left for the rerun"

    api.gemini_day.turn_the_day()
    again, _, rows = run(tmp_path, api, limits, 500)
    assert exit_code(again) == EXIT_OK and again.stop_reason is None
    assert sorted(row[2]["id"] for row in rows) == list(range(500)), "every line exactly once"
    assert api.record.served_ok_keys().most_common(1)[0][1] == 1 and sum(api.record.served_ok_keys().values()) == 500


def test_the_judge_fails_a_run_that_only_obeys_the_retry_delay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the per-day reading, the 429s' RetryInfo (seconds) has the run retry until its rate-limit wait runs
    out (minutes): the judge's 30 s catches it."""
    monkeypatch.setattr(registry, "_DAILY_QUOTA_READERS", ())
    api = MockApi(MockConfig(requests_per_minute=RPM, requests_per_day=30, latency=0.5))
    _, ended, rows = run(tmp_path, api, Limits(RPM, float("inf")), 40)
    assert ended - ran_out_at(api, 30) > 30.0 and len(rows) == 30


async def test_the_command_exits_3_naming_the_daily_quota_and_the_rerun_next_day_finishes(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [gemini_request(i) for i in range(50)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(requests_per_minute=RPM, requests_per_day=30)) as server:
        url = f"{server.origin}{PATH}"
        command = ("--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", url, "--max_requests_per_minute", "600")
        started = time.monotonic()
        code, _, stderr = await run_cli(*command)
        took = time.monotonic() - started
        print(f"the command ran {took:.2f} s (wall clock, loopback, process start included)")
        assert code == EXIT_STOPPED, stderr
        assert gemini_double.PER_DAY_QUOTA_ID in stderr and "of 30" in stderr and "midnight Pacific time" in stderr and "UTC" in stderr
        assert len(read_rows(output_path)) == 30 and all("candidates" in row[1] for row in read_rows(output_path))
        assert took < 30.0

        server.api.gemini_day.turn_the_day()
        code, _, stderr = await run_cli(*command)
        assert code == EXIT_OK, stderr
        assert sorted(row[2]["id"] for row in read_rows(output_path)) == list(range(50))
