"""`--mode batch` through the command, against the mock on a real socket: the summary at batch prices, and kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor.files.resume import sidecar_path
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.child import MockProcess
from tests.helpers import chat_request, read_rows, run_cli, write_jsonl
from tests.test_costs import GPT_4O_MINI_BATCH_INPUT, GPT_4O_MINI_BATCH_OUTPUT


def batch_command(input_path: Path, output_path: Path, url: str, *extra: str) -> list[str]:
    return [
        "--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", url,
        "--mode", "batch", "--batch_poll_interval", "0.1", *extra,
    ]


def ids_of(rows: list[Any]) -> Counter[int]:
    return Counter(row[2]["id"] for row in rows)


async def test_the_command_sends_the_file_as_batches_and_its_summary_prices_the_reported_usage_at_batch_prices(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(150)])
    output_path = tmp_path / "results.jsonl"
    summary_path = tmp_path / "summary.json"
    async with MockServer(MockConfig(batch_validation_seconds=0.05, batch_processing_seconds=0.2)) as server:
        code, _, stderr = await run_cli(
            *batch_command(input_path, output_path, server.url("chat/completions"), "--batch_max_lines", "50", "--summary_json", str(summary_path))
        )
        created = len(server.api.batches.created)

    assert code == 0, stderr
    rows = read_rows(output_path)
    assert ids_of(rows) == Counter(range(150)) and created == 3
    usage = [row[1]["usage"] for row in rows]
    spent = sum(u["prompt_tokens"] * GPT_4O_MINI_BATCH_INPUT + u["completion_tokens"] * GPT_4O_MINI_BATCH_OUTPUT for u in usage) / 1e6
    cost = json.loads(summary_path.read_text())["cost"]
    assert cost["pricing"] == "batch" and cost["spent_usd"] == pytest.approx(spent, rel=1e-3)
    assert "at batch prices" in stderr and "genai-prices" in stderr
    assert not sidecar_path(output_path, "batches").exists()


def wait_for_batches(mock: MockProcess, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while mock.stats()["batches"]["created"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} batches after {timeout}s"
        time.sleep(0.01)


@pytest.mark.e2e
async def test_kill_9_after_the_first_batch_was_created_then_a_rerun_makes_4_batches_in_all_and_writes_every_line_once(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(2_000)])
    output_path = tmp_path / "results.jsonl"
    with MockProcess("--batch_validation_seconds", "0.2", "--batch_processing_seconds", "3") as mock:
        arguments = batch_command(input_path, output_path, mock.url("chat/completions"), "--batch_max_lines", "500")
        argv = [sys.executable, "-m", "rate_limited_processor", *arguments]
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.to_thread(wait_for_batches, mock, 1)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert first.returncode == -signal.SIGKILL
        killed_with = mock.stats()["batches"]["created"]
        print(f"the killed run had created {killed_with} batches")
        assert sidecar_path(output_path, "batches").exists(), "the parts were on record before the first upload"

        code, _, stderr = await run_cli(*arguments)
        batches = mock.stats()["batches"]

    assert code == 0, stderr
    assert ids_of(read_rows(output_path)) == Counter(range(2_000))
    assert (batches["input_files"], batches["created"]) == (4, 4), f"{batches} (the killed run had created {killed_with})"


@pytest.mark.parametrize(
    "extra, url, message",
    [
        (["--ordered"], "http://127.0.0.1:9/v1/chat/completions", "--ordered is for --mode online"),
        (["--accounts", "accounts.jsonl"], "http://127.0.0.1:9/v1/chat/completions", "--accounts is for --mode online"),
        ([], "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent", "not an endpoint of OpenAI's Batch API"),
    ],
)
def test_what_batch_mode_does_not_do_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], url: str, message: str
) -> None:
    from rate_limited_processor.cli import main

    gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    line = gemini if "generateContent" in url else {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    input_path = write_jsonl(tmp_path / "requests.jsonl", [line])
    write_jsonl(tmp_path / "accounts.jsonl", [{"name": "a", "api_key": "sk-a-0123456789"}])
    flags = [str(tmp_path / flag) if flag.endswith(".jsonl") else flag for flag in extra]
    code = main(["--requests_filepath", str(input_path), "--request_url", url, "--mode", "batch", *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "requests_results.jsonl").exists()
