"""SIGHUP is a closed terminal or ssh session: the run stops as after Ctrl-C, the answers in flight are kept and
written, and the summary says so; a terminal that is gone makes no write fail the run.

The real thing: the command runs with a pseudo-terminal as its controlling terminal (and its stdin, stdout and
stderr, so it draws a progress bar), and the test closes the terminal's other end: the kernel sends SIGHUP,
and every later write to the terminal fails with EIO.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import signal
import termios
from pathlib import Path

import pytest

from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.record import request_key
from tests.helpers import chat_request, read_rows, write_jsonl
from tests.test_reliability import assert_exactly_once, command, start, wait_for_rows


def _take_the_terminal() -> None:
    """In the child: a session of its own, with the pty (its stdin) as the controlling terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("how", ["terminal closed", "kill -HUP"])
async def test_sighup_finishes_the_requests_in_flight_writes_them_and_a_rerun_completes(tmp_path: Path, how: str) -> None:
    n = 400
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path, summary_path = tmp_path / "results.jsonl", tmp_path / "summary.json"
    async with MockServer(MockConfig(latency=0.3)) as server:
        argv = command(input_path, output_path, server.url("chat/completions"), "--summary_json", str(summary_path))
        master, slave = pty.openpty()
        printed = bytearray()
        loop = asyncio.get_running_loop()

        def read_terminal() -> None:
            try:
                printed.extend(os.read(master, 65536))
            except OSError:
                loop.remove_reader(master)

        loop.add_reader(master, read_terminal)
        process = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_the_terminal)
        os.close(slave)
        try:
            await wait_for_rows(output_path, 50)
            if how == "terminal closed":
                loop.remove_reader(master)
                os.close(master)  # the terminal goes away: the kernel sends SIGHUP, writes to it fail from now on
            else:
                process.send_signal(signal.SIGHUP)
            await asyncio.wait_for(process.wait(), 30)
        finally:
            if how != "terminal closed":
                loop.remove_reader(master)
                os.close(master)
        assert process.returncode == 3, bytes(printed).decode(errors="replace")
        summary = json.loads(summary_path.read_text())
        assert summary["exit_code"] == 3 and summary["stop_reason"] == "interrupted by SIGHUP"
        rows = read_rows(output_path)  # every line complete
        answered = {entry.key for entry in server.record if entry.outcome == 200}
        assert {request_key(row[0]) for row in rows} == answered  # nothing answered was thrown away
        if how == "kill -HUP":
            assert "STOPPED EARLY: interrupted by SIGHUP" in bytes(printed).decode(errors="replace")

        rerun = await start(argv)
        _, stderr = await rerun.communicate()
        assert rerun.returncode == 0, stderr.decode()
        served_twice = len(server.record) - len({entry.key for entry in server.record})
    assert served_twice == 0
    assert_exactly_once(read_rows(output_path), n)
