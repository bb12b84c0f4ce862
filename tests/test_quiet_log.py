"""The default log level prints only what a person must act on; retries and 429s are counted and summarised.

The run of the issue that asked for this: 2,000 requests with 5% transient faults printed 107 lines before
its summary. Here the same run, in virtual time against the mock, with logging set up as the command sets
it up and the status line the command prints when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from rate_limited_processor import Settings, run_file_job
from rate_limited_processor.cli import configure_logging
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.ui.summary import format_summary
from tests.helpers import chat_request, mock_url, write_jsonl
from tests.virtual_time import run_virtual

#: 5% of requests meet a transient fault: each is retried, and almost all then succeed.
TRANSIENT_FAULTS = {"500": 0.02, "503": 0.01, "reset": 0.01, "html_502": 0.01}


def noisy_run(tmp_path: Path, name: str, level: int, capsys: pytest.CaptureFixture[str], count: int = 2_000) -> tuple[RunStats, str]:
    input_path = write_jsonl(tmp_path / f"{name}.jsonl", [chat_request(i) for i in range(count)])
    api = MockApi(MockConfig(requests_per_minute=1_200, tokens_per_minute=1_000_000, faults=TRANSIENT_FAULTS, seed=13))
    settings = Settings(request_url=mock_url(), api_key=None, token_encoding_name="cl100k_base")
    configure_logging(level)
    capsys.readouterr()
    stats = run_virtual(
        run_file_job(settings, input_path, tmp_path / f"{name}_results.jsonl", show_progress=False, status_interval=30.0, transport=MockTransport(api))
    )
    return stats, capsys.readouterr().err


def test_a_noisy_run_prints_a_few_status_lines_at_the_default_level_and_every_retry_at_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats, quiet = noisy_run(tmp_path, "quiet", logging.WARNING, capsys)
    assert stats.succeeded == 2_000 and stats.retries >= 60  # about 5% of 2,000 attempts needed another
    lines = quiet.splitlines()
    assert len(lines) <= 25, quiet
    assert all("retrying" not in line and "paused for" not in line for line in lines)
    status = [line for line in lines if "rate-limit 429s" in line]
    assert len(status) >= 3  # the run takes 100 s: a line every 30 s
    retries_in_status = sum(int(match) for match in re.findall(r"last 30\.0s: (\d+) retr", quiet))
    assert 0 < retries_in_status <= stats.retries  # the status lines carry the retries (all but the last partial interval's)
    assert f"({stats.retries:,} retries, {stats.rate_limit_errors:,} rate-limit 429s)" in format_summary(stats)

    loud_stats, loud = noisy_run(tmp_path, "loud", logging.INFO, capsys, count=500)
    assert loud_stats.retries > 0 and loud.count("; retrying in ") == loud_stats.retries  # at INFO, every retry has its line
    assert "paused for 0.00s" not in loud
