"""Files moved under the run, and disks that fill.

The output renamed (log rotation) or deleted mid-run is noticed (the path no longer names the file held), the run
stops and says where its rows are; the exit code is not 0. A full disk, when taking the lock or writing rows, is one
line naming the file and the cause, never a traceback; a rerun with room finishes the job.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, Limits, Settings, run_file_job
from rate_limited_processor.cli import EXIT_STOPPED, exit_code, main
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.transport.http import TransportRequest
from tests.helpers import chat_request, read_rows, write_jsonl
from tests.small_disk import fill, small_disk


def ids(rows: list[Any]) -> Counter[int]:
    return Counter(row[2]["id"] for row in rows)


@pytest.mark.parametrize("how", ["renamed", "deleted"])
async def test_the_output_moved_mid_run_stops_the_run_and_says_where_the_rows_are(tmp_path: Path, how: str) -> None:
    n = 300
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path, rotated = tmp_path / "results.jsonl", tmp_path / "results.jsonl.1"

    async def rotate() -> None:
        while not output_path.exists() or output_path.stat().st_size < 2_000:
            await asyncio.sleep(0.01)
        if how == "renamed":
            os.rename(output_path, rotated)
        else:
            os.unlink(output_path)

    async with MockServer(MockConfig(latency=0.05)) as server:
        settings = Settings(request_url=server.url("chat/completions"), api_key=None, limits=Limits(6_000, 10**9))  # 100 a second: 3 s
        rotation = asyncio.ensure_future(rotate())
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
        await rotation
        assert exit_code(stats) == EXIT_STOPPED
        assert stats.stop_reason is not None and str(output_path) in stats.stop_reason
        if how == "renamed":
            assert "moved or replaced during the run" in stats.stop_reason
            written = read_rows(rotated)
            assert len(written) == stats.succeeded < n  # stopped within about a second, every answer in the moved file
            os.rename(rotated, output_path)  # put back, as the message says: the rerun pays for the rest only
            served = len(server.record)
            again = await run_file_job(settings, input_path, output_path, show_progress=False)
            assert exit_code(again) == 0 and len(server.record) - served == n - len(written)
            assert ids(read_rows(output_path)) == Counter(range(n))
        else:
            assert "was deleted during the run" in stats.stop_reason and stats.succeeded < n


def test_a_run_shorter_than_a_check_interval_is_checked_at_its_end(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(5)])
    output_path = tmp_path / "results.jsonl"

    def answer(request: TransportRequest) -> dict[str, Any]:
        if "Question number 4:" in request.body["messages"][1]["content"]:
            os.rename(output_path, tmp_path / "rotated.jsonl")
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    settings = Settings(request_url="http://mock.invalid/v1/chat/completions", api_key=None, limits=UNLIMITED, max_in_flight=1)
    stats = asyncio.run(run_file_job(settings, input_path, output_path, show_progress=False, transport=answer))
    assert exit_code(stats) == EXIT_STOPPED and "moved or replaced" in (stats.stop_reason or "")
    assert ids(read_rows(tmp_path / "rotated.jsonl")) == Counter(range(5))


def test_a_full_disk_when_taking_the_lock_is_one_line_naming_the_lock_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(3)])
    with small_disk(tmp_path / "disk") as disk:
        fill(disk)
        code = main(["--requests_filepath", str(input_path), "--save_filepath", str(disk / "results.jsonl"),
                     "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--api_key", "sk-test-0123456789"])
        err = capsys.readouterr().err
        assert code == EXIT_STOPPED
        assert f"error: {disk / 'results.jsonl.lock'}: No space left on device" in err
        assert "Traceback" not in err and "internal error" not in err
        assert len(err.strip().splitlines()) == 1


async def test_a_disk_that_fills_mid_run_stops_with_one_line_and_a_rerun_with_room_finishes(tmp_path: Path) -> None:
    n = 400
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    with small_disk(tmp_path / "disk", size="64k") as disk:
        output_path = disk / "results.jsonl"
        async with MockServer(MockConfig(latency=0.01)) as server:
            argv = ["-m", "rate_limited_processor", "--requests_filepath", str(input_path), "--save_filepath", str(output_path),
                    "--request_url", server.url("chat/completions"), "--max_requests_per_minute", "60000", "--max_tokens_per_minute", "100000000"]
            first = await asyncio.create_subprocess_exec(sys.executable, *argv, stderr=asyncio.subprocess.PIPE)
            _, stderr = await first.communicate()
            text = stderr.decode()
            assert first.returncode == EXIT_STOPPED, text
            assert f"cannot write to {output_path}: No space left on device" in text and "Traceback" not in text
            written = len(output_path.read_bytes().split(b"\n")) - 1
            assert 0 < written < n
            os.system(f"mount -o remount,size=4m {disk}")  # room again
            second = await asyncio.create_subprocess_exec(sys.executable, *argv, stderr=asyncio.subprocess.PIPE)
            _, stderr = await second.communicate()
            assert second.returncode == 0, stderr.decode()
        assert ids(read_rows(output_path)) == Counter(range(n))


def test_a_parquet_output_directory_moved_mid_run_stops_the_run_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(5)])
    output_path = tmp_path / "results"

    def answer(request: TransportRequest) -> dict[str, Any]:
        if "Question number 4:" in request.body["messages"][1]["content"]:
            os.rename(output_path, tmp_path / "rotated")
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    settings = Settings(request_url="http://mock.invalid/v1/chat/completions", api_key=None, limits=UNLIMITED, max_in_flight=1)
    stats = asyncio.run(run_file_job(settings, input_path, output_path, show_progress=False, transport=answer, output_format="parquet"))
    assert exit_code(stats) == EXIT_STOPPED and "moved or deleted during the run" in (stats.stop_reason or "")
    for part in (output_path).iterdir():  # as the message says: the new parts into the old directory, put back
        os.rename(part, tmp_path / "rotated" / part.name)
    os.rmdir(output_path)
    os.rename(tmp_path / "rotated", output_path)
    served = asyncio.run(run_file_job(settings, input_path, output_path, show_progress=False, transport=answer, output_format="parquet"))
    assert exit_code(served) == 0 and served.succeeded == 0 and served.already_done == 5, "every answer kept: none paid twice"
