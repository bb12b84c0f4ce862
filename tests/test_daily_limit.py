"""`--max_requests_per_day`, `--max_tokens_per_day`: the day's spend kept beside the results (`<results>.day`), the
run stopped (exit 3, no failure rows) before the request that would pass a daily limit, and the rerun after the UTC
day turns finishing every line once. Runs are in virtual time, the calendar injected through `Clock.wall`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rate_limited_processor import UNLIMITED, Settings, run_file_job
from rate_limited_processor.base.clock import Clock, loop_time
from rate_limited_processor.base.errors import RunStopped
from rate_limited_processor.cli import main
from rate_limited_processor.cli.exits import EXIT_OK, EXIT_STOPPED, exit_code
from rate_limited_processor.core.daily_limit import DailyLimit, day_of, resets_at
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.files.day_file import read_day_record
from rate_limited_processor.files.resume_index import sidecar_path
from rate_limited_processor.mock_server import MockApi, MockConfig, MockServer, MockTransport
from tests.helpers import chat_request, mock_url, read_rows, run_cli, write_jsonl
from tests.virtual_time import run_virtual

#: 2026-03-14 18:00 UTC, a Saturday evening: six hours before the day's limits reset.
EVENING = datetime(2026, 3, 14, 18, 0, tzinfo=UTC).timestamp()
NEXT_MORNING = datetime(2026, 3, 15, 6, 0, tzinfo=UTC).timestamp()


# -- the pure count ------------------------------------------------------------------------------------


def test_the_day_is_the_utc_calendar_day_and_resets_at_utc_midnight() -> None:
    assert day_of(EVENING) == "2026-03-14"
    assert day_of(datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC).timestamp()) == "2026-03-14"
    assert resets_at(EVENING) == datetime(2026, 3, 15, tzinfo=UTC).timestamp()
    assert resets_at(datetime(2026, 3, 15, tzinfo=UTC).timestamp()) == datetime(2026, 3, 16, tzinfo=UTC).timestamp()


def test_requests_and_tokens_fit_up_to_the_limit_exactly_and_a_new_day_starts_from_nothing() -> None:
    daily = DailyLimit(requests=3, tokens=1_000)
    for _ in range(3):
        assert daily.fits(300, EVENING)
        daily.spend(300, EVENING)
    assert not daily.fits(1, EVENING), "a fourth request passes the request limit"
    assert "--max_requests_per_day 3 reached" in daily.stop_reason(1, EVENING)
    assert daily.fits(1, NEXT_MORNING) and (daily.day, daily.spent_requests) == ("2026-03-15", 0)

    tokens = DailyLimit(requests=None, tokens=1_000)
    tokens.spend(900, EVENING)
    assert tokens.fits(100, EVENING) and not tokens.fits(101, EVENING)
    reason = tokens.stop_reason(101, EVENING)
    assert "--max_tokens_per_day 1,000 reached" in reason and "resets at 2026-03-15 00:00 UTC (in 6:00:00)" in reason
    with pytest.raises(ValueError):
        DailyLimit(requests=0, tokens=None)


def test_the_record_restores_the_same_days_spend_and_another_days_counts_for_nothing() -> None:
    daily = DailyLimit(requests=10, tokens=None)
    daily.spend(5, EVENING)
    again = DailyLimit(requests=10, tokens=None)
    again.restore(json.loads(json.dumps(daily.record())))
    assert again.fits(0, EVENING) and again.spent_requests == 1 and again.spent_tokens == 5
    next_day = DailyLimit(requests=10, tokens=None)
    next_day.restore(daily.record())
    assert next_day.fits(0, NEXT_MORNING) and next_day.spent_requests == 0
    for damaged in (None, {}, {"day": 3, "requests": "x"}):
        DailyLimit(requests=1, tokens=None).restore(damaged)  # ignored, not raised


def test_settings_take_the_daily_limits_and_check_them() -> None:
    settings = Settings(mock_url(), api_key=None, max_requests_per_day=300, max_tokens_per_day=10_000)
    assert (settings.max_requests_per_day, settings.max_tokens_per_day) == (300, 10_000)
    for wrong in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_requests_per_day"):
            Settings(mock_url(), api_key=None, max_requests_per_day=wrong)  # type: ignore[arg-type]


# -- runs, in virtual time -----------------------------------------------------------------------------


def run_on(day_start: float, settings: Settings, api: MockApi, input_path: Path, output_path: Path) -> RunStats:
    """One run of the file job with the calendar at `day_start` when it starts."""

    async def job() -> RunStats:
        started = loop_time()
        clock = Clock(wall=lambda: day_start + loop_time() - started)
        return await run_file_job(settings, input_path, output_path, transport=MockTransport(api), clock=clock, show_progress=False)

    return run_virtual(job())


def test_500_lines_with_300_a_day_stop_after_300_and_the_next_day_finishes_them_once(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(500)])
    output_path = tmp_path / "results.jsonl"
    settings = Settings(mock_url(), api_key=None, limits=UNLIMITED, max_requests_per_day=300)
    api = MockApi(MockConfig())

    first = run_on(EVENING, settings, api, input_path, output_path)
    assert exit_code(first) == EXIT_STOPPED
    assert first.stop_reason is not None and "--max_requests_per_day 300 reached" in first.stop_reason
    assert "resets at 2026-03-15 00:00 UTC" in first.stop_reason
    rows = read_rows(output_path)
    assert len(api.record.entries) == 300 and len(rows) == 300
    assert all("error" not in row[1] for row in rows), "no failure rows: the lines not sent are left for a rerun"
    record = read_day_record(output_path)
    assert record is not None and (record["day"], record["requests"]) == ("2026-03-14", 300) and record["tokens"] > 0

    same_day = run_on(EVENING + 3_600, settings, api, input_path, output_path)
    assert exit_code(same_day) == EXIT_STOPPED and len(api.record.entries) == 300, "the same day: nothing more is sent"
    assert same_day.stop_reason is not None and "--max_requests_per_day 300 reached: 300 requests" in same_day.stop_reason
    assert len(read_rows(output_path)) == 300

    next_day = run_on(NEXT_MORNING, settings, api, input_path, output_path)
    assert exit_code(next_day) == EXIT_OK and next_day.stop_reason is None
    rows = read_rows(output_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(500)), "every line exactly once"
    assert api.record.served_ok_keys().most_common(1)[0][1] == 1 and len(api.record.entries) == 500
    record = read_day_record(output_path)
    assert record is not None and (record["day"], record["requests"]) == ("2026-03-15", 200)


def test_the_token_limit_stops_before_the_request_that_would_pass_it(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(50)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig())
    unlimited = run_on(EVENING, Settings(mock_url(), api_key=None, limits=UNLIMITED, max_tokens_per_day=10**9), api, input_path, tmp_path / "probe.jsonl")
    per_request = read_day_record(tmp_path / "probe.jsonl")["tokens"] // 50  # type: ignore[index]
    assert unlimited.stop_reason is None and per_request > 0

    settings = Settings(mock_url(), api_key=None, limits=UNLIMITED, max_tokens_per_day=per_request * 20 + per_request // 2)
    stats = run_on(EVENING, settings, MockApi(MockConfig()), input_path, output_path)
    assert exit_code(stats) == EXIT_STOPPED and stats.stop_reason is not None and "--max_tokens_per_day" in stats.stop_reason
    assert len(read_rows(output_path)) == 20


def test_a_library_processor_counts_its_own_sends_without_a_file(tmp_path: Path) -> None:
    from rate_limited_processor import Processor

    settings = Settings(mock_url(), api_key=None, limits=UNLIMITED, max_requests_per_day=5)

    async def main_() -> tuple[int, str | None]:
        processor = Processor(settings, transport=MockTransport(MockApi(MockConfig())))
        async with processor.run([chat_request(i) for i in range(8)]) as results:
            got = 0
            with pytest.raises(RunStopped):
                async for _ in results:
                    got += 1
        return got, processor.stats.stop_reason

    got, reason = run_virtual(main_())
    assert got == 5 and reason is not None and "--max_requests_per_day 5" in reason
    assert not list(tmp_path.iterdir())


# -- the command -------------------------------------------------------------------------------------


async def test_the_command_stops_with_exit_3_naming_the_daily_limit_and_keeps_the_day_beside_the_results(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(30)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig()) as server:
        common = ("--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", server.url("chat/completions"),
                  "--max_requests_per_minute", "60000", "--max_tokens_per_minute", "100000000", "--max_requests_per_day", "12")
        code, _, stderr = await run_cli(*common)
        assert code == 3, stderr
        assert "--max_requests_per_day 12 reached" in stderr and "resets at" in stderr and "UTC" in stderr
        assert len(read_rows(output_path)) == 12
        record = json.loads(sidecar_path(output_path, "day").read_text())
        assert record["requests"] == 12 and record["day"] == day_of(datetime.now(UTC).timestamp())

        code, _, stderr = await run_cli(*common)
        assert code == 3 and "--max_requests_per_day 12 reached: 12 requests" in stderr, stderr
        assert len(read_rows(output_path)) == 12 and len(server.record.entries) == 12


@pytest.mark.parametrize("flag", ["--max_requests_per_day", "--max_tokens_per_day"])
def test_the_daily_limits_are_refused_in_batch_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(0)])
    code = main(["--requests_filepath", str(input_path), "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--mode", "batch", flag, "10"])
    assert code == 2 and f"{flag} is for --mode online" in capsys.readouterr().err


def test_the_day_file_may_not_be_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = write_jsonl(tmp_path / "results.jsonl.day", [chat_request(0)])
    code = main(["--requests_filepath", str(input_path), "--save_filepath", str(tmp_path / "results.jsonl"), "--request_url",
                 "http://127.0.0.1:9/v1/chat/completions", "--max_requests_per_day", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "the day file beside the results (results.jsonl.day)" in err, err
