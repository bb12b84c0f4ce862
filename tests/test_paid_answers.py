"""A paid answer is never thrown away: whatever the headers of a 200 say, and whatever fails while the run
learns from them, the answer is the row.

An attacker's server: Anthropic's answers over loopback, carrying `anthropic-ratelimit-*-limit: 0` (and
other nonsense) in their headers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor import Limits, Settings, run_file_job
from rate_limited_processor.core.learned_limits import LimitTuner, SendMark, parse_rate_limit_headers
from rate_limited_processor.mock_server.anthropic import message_payload
from tests.helpers import read_rows, serving, write_jsonl

CLAUDE_KEY = "sk-ant-api03-paidanswers0123456789"

ZERO_LIMITS = {
    "anthropic-ratelimit-requests-limit": "0",
    "anthropic-ratelimit-input-tokens-limit": "0",
    "anthropic-ratelimit-output-tokens-limit": "0",
    "anthropic-ratelimit-requests-reset": "2026-12-01T10:00:01Z",
}


def claude_request(i: int) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": f"question {i}"}], "metadata": {"id": i}}


def answering_with(headers: dict[str, str]) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(message_payload(body, model=body["model"], key="k", input_tokens=5, output_tokens=3), headers=headers)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


def run_against(tmp_path: Path, app: web.Application, lines: int = 6) -> tuple[Any, list[Any]]:
    requests_path = write_jsonl(tmp_path / "requests.jsonl", [claude_request(i) for i in range(lines)])
    save_path = tmp_path / "results.jsonl"

    async def main() -> Any:
        async with serving(app) as origin:
            settings = Settings(request_url=f"{origin}/v1/messages", api_key=CLAUDE_KEY, limits=Limits(6_000, 1_000_000, output_tokens_per_minute=1_000_000))
            return await run_file_job(settings, requests_path, save_path, show_progress=False)

    stats = asyncio.run(main())
    return stats, read_rows(save_path)


def test_anthropic_limits_of_zero_are_ignored_with_a_warning_naming_the_header(caplog: pytest.LogCaptureFixture) -> None:
    report = parse_rate_limit_headers(ZERO_LIMITS, now=0.0)
    assert {name for name, _ in report.ignored} == {name for name in ZERO_LIMITS if name.endswith("-limit")}
    warnings: list[str] = []
    tuner = LimitTuner(Limits(60, 1_000), warn=warnings.append)
    tuner.observe(SendMark(0.0, 1, 10), report)  # was a KeyError: the warning looked the floor up among OpenAI's headers only
    assert len(warnings) == 3 and all("no account's limit" in warning for warning in warnings)
    assert any("anthropic-ratelimit-output-tokens-limit" in warning and "100 a minute" in warning for warning in warnings)


def test_a_200_with_limits_of_zero_is_written_as_the_answer_it_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stats, rows = run_against(tmp_path, answering_with(ZERO_LIMITS))
    assert stats.succeeded == 6 and stats.failed == 0
    assert sorted(row[2]["id"] for row in rows) == list(range(6))
    assert all(row[1]["content"][0]["text"] == "echo echo echo" for row in rows)
    assert "internal error" not in caplog.text


def test_a_bug_while_learning_from_a_200_keeps_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The root of it: not one bad header, but any failure after a good answer came. It is said, and the answer kept."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a header nobody foresaw")

    monkeypatch.setattr(LimitTuner, "observe", broken)
    with caplog.at_level(logging.ERROR, logger="rate_limited_processor"):
        stats, rows = run_against(tmp_path, answering_with({"anthropic-ratelimit-requests-limit": "50"}), lines=3)
    assert stats.succeeded == 3 and stats.failed == 0
    assert all(isinstance(row[1], dict) and row[1]["type"] == "message" for row in rows)
    assert "the answer is kept" in caplog.text
