"""`--mode batch --request_url .../v1/messages` through the command, against the Message Batches mock on a real
socket: the 600-line judge, and kill -9 (after a batch exists, and while a create is being answered) then a rerun."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor.files.resume import sidecar_path
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import read_rows, run_cli, write_jsonl
from tests.test_message_batches import ids_of, message_request

pytestmark = pytest.mark.e2e


def batch_command(input_path: Path, output_path: Path, url: str, *extra: str) -> list[str]:
    return [
        "--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", url,
        "--mode", "batch", "--batch_poll_interval", "0.1", *extra,
    ]


def failure_rows(rows: list[Any]) -> int:
    return sum(1 for row in rows if isinstance(row[1], list))


async def test_600_lines_in_batches_of_250_with_3_percent_errored_and_2_percent_expired(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(600)])
    output_path = tmp_path / "results.jsonl"
    config = MockConfig(batch_processing_seconds=0.5, batch_failed_lines=0.03, batch_expired_lines=0.02, seed=11)
    async with MockServer(config) as server:
        code, _, stderr = await run_cli(*batch_command(input_path, output_path, server.url("messages"), "--batch_max_lines", "250"))
        batches = server.api.message_batches

    rows = read_rows(output_path)
    print(f"results: {dict(batches.outcomes)}; failure rows {failure_rows(rows)}")
    assert code == 1, stderr  # the run finished, with some lines failed
    assert ids_of(rows) == Counter(range(600))
    assert len(batches.created) == 3 == -(-600 // 250)
    assert sum(batches.received.values()) == 600 == len(batches.received)
    assert batches.outcomes["errored"] > 0 and batches.outcomes["expired"] > 0
    assert failure_rows(rows) == batches.outcomes["errored"] + batches.outcomes["expired"]


async def kill_when(process: asyncio.subprocess.Process, created: Any, count: int, timeout: float = 30.0) -> None:
    """SIGKILL the process once the mock holds `count` batches."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(created) < count:
        assert loop.time() < deadline, f"fewer than {count} batches after {timeout}s"
        await asyncio.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("create_delay", [0.0, 5.0], ids=["after-a-batch-exists", "while-a-create-is-answered"])
async def test_kill_9_then_a_rerun_submits_no_line_twice_and_writes_every_line_once(tmp_path: Path, create_delay: float) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(600)])
    output_path = tmp_path / "results.jsonl"
    config = MockConfig(batch_processing_seconds=2.0, batch_create_delay=create_delay, seed=5)
    async with MockServer(config) as server:
        arguments = batch_command(input_path, output_path, server.url("messages"), "--batch_max_lines", "250")
        batches = server.api.message_batches
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rate_limited_processor", *arguments, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await kill_when(first, batches.created, 1)
        killed_with = len(batches.created)
        assert sidecar_path(output_path, "batches").exists(), "the parts were on record before the first create"
        if create_delay:
            record = sidecar_path(output_path, "batches").read_text()
            assert batches.created[0] not in record, "killed while the create was answered: its id was never recorded"

        code, _, stderr = await run_cli(*arguments)

        repeated = [custom_id for custom_id, count in batches.received.items() if count > 1]
        created = len(batches.created)
    print(f"the killed run had created {killed_with} batches; {created} in all")
    assert code == 0, stderr
    assert repeated == [], f"{len(repeated)} custom_ids were submitted twice"
    assert len(batches.received) == 600 and created == 3
    assert ids_of(read_rows(output_path)) == Counter(range(600))
