"""Files that are not the run's own: never a byte of them changed, and one run at a time per results file.

What an attacker (or a slip of the keyboard) hands the tool as its output: the input itself under another
name (a hard link, a symlink), a file of someone else's, a FIFO, a directory, a results file another run is
writing right now, and a `<results>.lock` that is not ours. Each is refused before anything is sent (exit 2
from the command) and left exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, RetryPolicy, Settings, run_file_job
from rate_limited_processor.base.errors import ResumeError, UsageError
from rate_limited_processor.cli import main
from rate_limited_processor.files.resume import prepare_results_file
from rate_limited_processor.jobs.file_job import OutputLock
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from tests.helpers import chat_request, mock_url, read_rows, run_cli, write_jsonl
from tests.virtual_time import run_virtual

#: A URL nothing listens on: a refused run never gets as far as connecting.
NOWHERE = "http://127.0.0.1:9/v1/chat/completions"


def settings() -> Settings:
    return Settings(request_url=mock_url(), api_key=None, limits=UNLIMITED)


def requests_file(tmp_path: Path, n: int = 3) -> Path:
    return write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(n)])


def job(input_path: Path, output_path: Path, api: MockApi | None = None, **options: Any) -> Any:
    return run_file_job(settings(), input_path, output_path, show_progress=False, transport=MockTransport(api or MockApi()), **options)


def command(input_path: Path, output_path: Path, *extra: str) -> list[str]:
    return ["--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", NOWHERE, "--no_progress", *extra]


# -- the input under another name ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["hard link", "symlink", "same path", "relative path"])
def test_an_output_that_is_the_input_under_any_name_is_refused_and_the_input_is_untouched(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(1)])  # one line: it looked like "a torn last row"
    before = input_path.read_bytes()
    output_path = tmp_path / "results.jsonl"
    if how == "hard link":
        os.link(input_path, output_path)
    elif how == "symlink":
        output_path.symlink_to(input_path)
    elif how == "same path":
        output_path = input_path
    else:
        monkeypatch.chdir(tmp_path)
        output_path = Path("./requests.jsonl")

    code = main(command(input_path, output_path))
    assert code == 2 and "same file as the input" in capsys.readouterr().err
    api = MockApi()
    with pytest.raises(UsageError, match="same file as the input"):
        run_virtual(job(input_path, output_path, api))  # the library refuses it too
    assert len(api.record) == 0
    assert input_path.read_bytes() == before


# -- someone else's file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"hello\n",  # a text file of the user's
        b'{"a": 1}\n',  # JSON, but not one of our rows
        b'{"model": "gpt-4o-mini", "messages": []}\n' * 3,  # someone's requests file
        b"notes without a final newline",  # only a last line that starts like a row can be a torn write
        b"\n",  # a blank line
        b"\x00\x01\x02binary\xff",
        b'["only", "strings"]\n',  # a list, but not [request, response-or-errors(, metadata)]
    ],
    ids=["text", "json object", "requests", "no newline", "blank", "binary", "list of strings"],
)
def test_a_file_that_is_not_a_results_file_is_refused_and_left_as_it_was(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = requests_file(tmp_path)
    output_path = tmp_path / "notes.txt"
    output_path.write_bytes(content)
    code = main(command(input_path, output_path))
    err = capsys.readouterr().err
    assert code == 2 and "is not a results file of this tool" in err and "Traceback" not in err
    code = main(command(input_path, output_path, "--dry_run"))
    assert code == 2 and "is not a results file of this tool" in capsys.readouterr().err
    api = MockApi()
    with pytest.raises(ResumeError, match="not a results file"):
        run_virtual(job(input_path, output_path, api))
    assert len(api.record) == 0
    assert output_path.read_bytes() == content


def test_a_complete_last_line_that_is_not_a_row_is_damage_not_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    content = '[{"input": "a"}, {"data": []}]\n{"a note": "appended by hand"}\n'
    path.write_text(content)
    with pytest.raises(ResumeError, match="row 2 is not a result row"):
        prepare_results_file(path)
    assert path.read_text() == content


def test_only_a_last_line_without_its_newline_that_starts_like_a_row_is_cut_as_torn(tmp_path: Path) -> None:
    intact = '[{"input": "a"}, {"data": []}]\n'
    for tail, cut in (('[{"input": "b"}, {"da', True), ('{"id": "batch_r', True), ("a note typed by hand", False)):
        path = tmp_path / "results.jsonl"
        path.write_text(intact + tail)
        if cut:
            assert prepare_results_file(path)[1].repaired_torn_line
            assert path.read_text() == intact
        else:
            with pytest.raises(ResumeError, match="row 2 is not a result row"):
                prepare_results_file(path)
            assert path.read_text() == intact + tail


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_output_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = requests_file(tmp_path)
    output_path = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(output_path)  # opening it to append would block until a reader came
    else:
        output_path.mkdir()
    says = "not a regular file" if kind == "fifo" else "is a directory"
    code = main(command(input_path, output_path))
    assert code == 2 and says in capsys.readouterr().err
    with pytest.raises(UsageError, match=says):
        run_virtual(job(input_path, output_path))


# -- one run at a time ------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs_and_neither_pays_twice(tmp_path: Path) -> None:
    input_path = requests_file(tmp_path, 20)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(latency=1.0))  # the first run is still going when the second starts

    async def both() -> tuple[Any, BaseException | None]:
        first = asyncio.create_task(job(input_path, output_path, api))
        await asyncio.sleep(0.5)
        assert output_path.with_name("results.jsonl.lock").exists()
        try:
            await job(input_path, output_path, api)
        except UsageError as error:
            second: BaseException | None = error
        else:
            second = None
        return await first, second

    stats, refused = run_virtual(both())
    assert isinstance(refused, UsageError)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(refused)
    assert stats.succeeded == 20 and len(api.record) == 20  # each request paid for once
    assert len(read_rows(output_path)) == 20
    assert not output_path.with_name("results.jsonl.lock").exists()  # released, and tidied, at the end
    again = run_virtual(job(input_path, output_path, api))  # and the next run may go
    assert again.already_done == 20 and len(api.record) == 20


async def test_the_command_exits_2_naming_the_process_that_holds_the_output(tmp_path: Path) -> None:
    input_path = requests_file(tmp_path)
    output_path = tmp_path / "results.jsonl"
    with OutputLock(output_path):
        code, _, stderr = await run_cli(*command(input_path, output_path))
        dry_code, dry_out, dry_err = await run_cli(*command(input_path, output_path, "--dry_run", "--max_requests_per_minute", "60"))
    assert code == 2, stderr
    assert "is in use by another run" in stderr and f"pid {os.getpid()}" in stderr and "Traceback" not in stderr
    assert dry_code == 0, dry_err  # a dry run only reads: it needs no lock
    assert output_path.read_bytes() == b""


@pytest.mark.parametrize("how", ["hard link", "symlink"])
def test_another_name_for_a_results_file_being_written_is_refused_too(tmp_path: Path, how: str) -> None:
    output_path = tmp_path / "results.jsonl"
    output_path.write_text("")
    other = tmp_path / "elsewhere" / "same.jsonl"
    other.parent.mkdir()
    if how == "hard link":
        os.link(output_path, other)
    else:
        other.symlink_to(output_path)
    with OutputLock(output_path), pytest.raises(UsageError, match="another run"), OutputLock(other):
        pass


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path: Path) -> None:
    input_path = requests_file(tmp_path)
    output_path = tmp_path / "results.jsonl"
    lock_path = tmp_path / "results.jsonl.lock"
    lock_path.write_text("rate_limited_processor lock: pid 999999 on gone-host since 2024-01-01T00:00:00+0000\n")  # kill -9 left it
    stats = run_virtual(job(input_path, output_path))
    assert stats.succeeded == 3 and not lock_path.exists()


def test_a_lock_file_that_is_not_ours_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    input_path = requests_file(tmp_path)
    output_path = tmp_path / "results.jsonl"
    lock_path = tmp_path / "results.jsonl.lock"
    lock_path.write_text("my own notes, in a file that happens to have this name\n")
    api = MockApi()
    with pytest.raises(UsageError, match="not a lock file of this tool"):
        run_virtual(job(input_path, output_path, api))
    assert lock_path.read_text() == "my own notes, in a file that happens to have this name\n"
    assert len(api.record) == 0


def test_retry_failed_rewrites_the_real_file_behind_a_symlink_and_keeps_its_permissions(tmp_path: Path) -> None:
    input_path = requests_file(tmp_path, 10)
    real = tmp_path / "store" / "results.jsonl"
    real.parent.mkdir()
    link = tmp_path / "results.jsonl"
    link.symlink_to(real)
    once = Settings(request_url=mock_url(), api_key=None, limits=UNLIMITED, retry=RetryPolicy(max_attempts=1))
    flaky = MockTransport(MockApi(MockConfig(faults={"500": 0.5}, seed=2)))
    run_virtual(run_file_job(once, input_path, link, show_progress=False, transport=flaky))
    assert any(isinstance(row[1], list) for row in read_rows(real))  # some failed
    real.chmod(0o640)
    stats = run_virtual(job(input_path, link, MockApi(), retry_failed=True))
    assert stats.succeeded > 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    rows = read_rows(real)
    assert len(rows) == 10 and all(isinstance(row[1], dict) for row in rows)
    assert sorted(row[2]["id"] for row in rows) == list(range(10))
    assert json.loads(real.read_text().splitlines()[0])  # still plain JSONL
