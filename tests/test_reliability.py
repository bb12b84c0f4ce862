"""Nothing lost, nothing paid twice: kill -9 and resume, Ctrl-C, an unwritable output, bad input.

The command runs as a real subprocess against the mock API served from the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.record import request_key
from tests.helpers import chat_request, read_rows, run_cli, write_jsonl


def command(input_path: Path, output_path: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rate_limited_processor", "--requests_filepath", str(input_path),
        "--save_filepath", str(output_path), "--request_url", url,
        "--max_requests_per_minute", "6000", "--max_tokens_per_minute", "10000000", *extra,
    ]


async def start(argv: list[str], **kwargs: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **kwargs)  # type: ignore[arg-type]


def complete_rows(path: Path) -> list[list]:
    """The rows a reader would trust: complete lines only (the last one may be torn)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


async def wait_for_rows(path: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(complete_rows(path)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} rows after {timeout}s"
        await asyncio.sleep(0.02)


def assert_exactly_once(rows: list[list], n: int) -> None:
    ids = Counter(row[2]["id"] for row in rows)
    assert ids == Counter(range(n)), f"missing {set(range(n)) - set(ids)}, twice {[i for i, c in ids.items() if c > 1]}"
    assert all(isinstance(row[1], dict) for row in rows)


async def test_kill_9_then_rerun_every_line_once_and_nothing_finished_is_sent_again(tmp_path: Path) -> None:
    n = 600
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path = tmp_path / "results.jsonl"
    kill_after = random.Random(4).randint(100, 400)  # a random point, reproducible
    async with MockServer(MockConfig(latency=0.05, latency_jitter=0.1)) as server:
        argv = command(input_path, output_path, server.url("chat/completions"))
        first = await start(argv)
        await wait_for_rows(output_path, kill_after)
        first.kill()
        await first.wait()
        assert first.returncode == -signal.SIGKILL
        # As if it died in the middle of a row, too.
        with open(output_path, "a") as file:
            file.write('[{"model": "gpt-4o-mini", "messages": [{"role": "us')
        finished_before = {request_key(row[0]) for row in complete_rows(output_path)}
        served_before = len(server.record)

        second = await start(argv)
        _, stderr = await second.communicate()
        assert second.returncode == 0, stderr.decode()
        sent_again = [entry for entry in server.record.entries[served_before:] if entry.key in finished_before]

    assert sent_again == [], f"{len(sent_again)} requests with a final row were sent again"
    assert "cut off a torn last line" in stderr.decode()
    assert f"resuming: {output_path} already holds {len(finished_before):,} results" in stderr.decode()
    assert f"already done   {len(finished_before):,}" in stderr.decode()
    assert_exactly_once(read_rows(output_path), n)


async def test_ctrl_c_finishes_in_flight_requests_writes_them_and_exits_3_then_a_rerun_completes(tmp_path: Path) -> None:
    n = 400
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(latency=0.3)) as server:
        # 50 a second: the run lasts 8 s, so a test process the machine starves for a few seconds still signals it
        # with requests in flight (at 100 a second, one starved for 4 s signalled after the last send).
        argv = command(input_path, output_path, server.url("chat/completions"), "--max_requests_per_minute", "3000")
        first = await start(argv)
        await wait_for_rows(output_path, 50)
        first.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        _, stderr = await first.communicate()
        text = stderr.decode()
        assert first.returncode == 3, text
        assert "STOPPED EARLY: interrupted by SIGINT" in text and "Traceback" not in text
        assert re.search(r"SIGINT: taking no more requests; finishing \d+ in flight \(up to 30s\); Ctrl-C again to abandon them", text), text
        rows = read_rows(output_path)  # every line complete
        # The ~30 requests in flight (0.3 s latency at 100/s) were finished and written, not abandoned...
        answered = [entry for entry in server.record if entry.outcome == 200]
        assert {request_key(row[0]) for row in rows} == {entry.key for entry in answered}
        # ...and nothing new was sent once the signal had been handled (within half a second of being sent: a loaded
        # machine may take a while to run the process's handler, and sends already on their way still arrive).
        late = [entry for entry in server.record if entry.arrived_at > interrupted_at + 0.5]
        assert late == []

        second = await start(argv)
        _, stderr = await second.communicate()
        assert second.returncode == 0, stderr.decode()
    assert_exactly_once(read_rows(output_path), n)


async def test_a_second_ctrl_c_stops_at_once_without_corrupting_the_output(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(300)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(faults={"hang": 0.3}, seed=2)) as server:
        argv = command(input_path, output_path, server.url("chat/completions"), "--request_timeout", "60", "--max_in_flight", "20")
        process = await start(argv)
        await wait_for_rows(output_path, 5)
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        assert still_running(process)  # still waiting for the hung requests (up to the grace period)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
    assert time.monotonic() - started < 5
    assert process.returncode == 3, stderr.decode()
    assert "STOPPED EARLY" in stderr.decode()
    assert re.search(r"SIGINT again: abandoning the \d+ in flight \(a rerun sends them\)", stderr.decode())
    read_rows(output_path)  # parses: no torn or partial row


def still_running(process: asyncio.subprocess.Process) -> bool:
    return process.returncode is None


def limit_file_size(max_bytes: int):  # noqa: ANN201 - a preexec_fn
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


async def test_output_becoming_unwritable_stops_cleanly_and_a_rerun_resumes(tmp_path: Path) -> None:
    n = 200
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer() as server:
        argv = command(input_path, output_path, server.url("chat/completions"))
        full = await start(argv, preexec_fn=limit_file_size(30_000))  # the disk "fills up" at 30 kB
        _, stderr = await full.communicate()
        text = stderr.decode()
        assert full.returncode == 3, text
        assert "cannot write to" in text and "Traceback" not in text
        written = complete_rows(output_path)
        assert 0 < len(written) < n

        rerun = await start(argv)
        _, stderr = await rerun.communicate()
        assert rerun.returncode == 0, stderr.decode()
    assert_exactly_once(read_rows(output_path), n)


async def test_bad_input_is_recorded_line_by_line_and_never_stops_the_run(tmp_path: Path) -> None:
    good = [chat_request(i) for i in range(5)]
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good[0]).encode(),  # line 1: a BOM from a Windows editor: fine
        b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # 2: Latin-1, not UTF-8
        b"x" * 10_000_000,  # 3: a 10 MB line that is not JSON
        json.dumps(good[1]).encode(),  # 4
        b"[1, 2, 3]",  # 5: an array
        b"42",  # 6: a number
        json.dumps({"model": "gpt-4o-mini", "metadata": {"id": 99}}).encode(),  # 7: no messages
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": {"score": NaN}}',  # 8
        b"",  # 9: blank, skipped
        json.dumps(good[2]).encode(),  # 10
    ]
    input_path = tmp_path / "requests.jsonl"
    input_path.write_bytes(b"\n".join(lines) + b"\n")
    output_path = tmp_path / "results.jsonl"
    async with MockServer() as server:
        code, _, stderr = await run_cli(*command(input_path, output_path, server.url("chat/completions"))[3:])
        assert len(server.record) == 3
    assert code == 1, stderr
    rows = read_rows(output_path)
    assert len(rows) == 9
    errors = sorted(row[1][0] for row in rows if isinstance(row[1], list))
    assert [error.split(":")[0] for error in errors] == ["line 2", "line 3", "line 5", "line 6", "line 7", "line 8"]
    assert "not valid UTF-8" in errors[0] and "not valid JSON" in errors[1] and "NaN" in errors[5]
    assert max(len(json.dumps(row)) for row in rows) < 5_000  # the 10 MB line is clipped in its record
    for error in errors:
        assert error.split(" (")[0].split(": ")[0] in stderr  # each one is also logged, naming its line


async def test_a_file_with_no_usable_request_is_refused_before_sending(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    garbage = write_jsonl(tmp_path / "garbage.jsonl", ["not json"] * 150)
    async with MockServer() as server:
        for path, message in ((empty, "holds no requests"), (garbage, "none of the first 100 lines")):
            code, _, stderr = await run_cli("--requests_filepath", str(path), "--request_url", server.url("chat/completions"))
            assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
        assert len(server.record) == 0


async def test_retry_failed_resends_only_the_failures_and_leaves_each_line_once(tmp_path: Path) -> None:
    n = 100
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(faults={"500": 0.2}, seed=5)) as flaky:
        code, _, _ = await run_cli(*command(input_path, output_path, flaky.url("chat/completions"), "--max_attempts", "1")[3:])
    assert code == 1
    failed = sum(isinstance(row[1], list) for row in read_rows(output_path))
    assert failed > 0
    async with MockServer() as healthy:
        code, _, stderr = await run_cli(*command(input_path, output_path, healthy.url("chat/completions"))[3:])
        # A plain rerun: failures are final, nothing is sent, and it says so (exit 1, naming --retry_failed).
        assert code == 1 and len(healthy.record) == 0
        assert f"{failed:,} rows of earlier runs are failures" in stderr and "--retry_failed" in stderr
        code, _, stderr = await run_cli(*command(input_path, output_path, healthy.url("chat/completions"), "--retry_failed")[3:])
        assert code == 0, stderr
        assert len(healthy.record) == failed  # only the failures were sent again
    assert_exactly_once(read_rows(output_path), n)
