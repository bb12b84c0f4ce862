"""Side files never destroy a main file: every file the command writes (results, lock, index, batch record,
summary, reports) is checked against every file it reads or writes, by identity, before anything is opened
for writing; a refusal writes nothing. A summary that cannot be written leaves no earlier run's in its place.

An attacker's arguments: the summary or a report pointed at the paid results, the input, the accounts file,
each other; under another name (a symlink, a hard link); an input or accounts file where a sidecar goes.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from rate_limited_processor import UNLIMITED, Settings, run_file_job
from rate_limited_processor.base.errors import UsageError
from rate_limited_processor.cli import main
from tests.helpers import chat_request, write_jsonl
from tests.small_disk import fill, small_disk

URL = "http://127.0.0.1:9/v1/chat/completions"  # nothing listens: a run that got as far as sending would fail


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """An input, the paid results of an earlier run, an accounts file and an earlier summary."""
    write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(3)])
    write_jsonl(tmp_path / "results.jsonl", [[chat_request(0), {"choices": [{"message": {"content": "PAID"}}]}, {"id": 0}]])
    write_jsonl(tmp_path / "accounts.jsonl", [{"name": "a", "api_key": "sk-side-files-0123456789abcdef"}])
    return tmp_path


def run(world: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--requests_filepath", str(world / "requests.jsonl"), "--save_filepath", str(world / "results.jsonl"), "--request_url", URL,
                 "--api_key", "sk-test-0123456789", *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, victim",
    [
        ("--summary_json", "results.jsonl"),
        ("--summary_json", "requests.jsonl"),
        ("--summary_json", "accounts.jsonl"),
        ("--summary_json", "results.jsonl.lock"),
        ("--summary_json", "results.jsonl.index"),
        ("--report", "results.jsonl"),
        ("--report", "accounts.jsonl"),
        ("--report_html", "requests.jsonl"),
        ("--report_html", "summary.json"),
    ],
)
def test_an_output_pointed_at_another_file_of_the_run_is_refused_and_nothing_is_written(
    world: Path, flag: str, victim: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(world)
    code, err = run(world, "--accounts", str(world / "accounts.jsonl"), "--summary_json", str(world / "summary.json"), flag, str(world / victim),
                    capsys=capsys)
    assert code == 2 and "is the same file as" in err and "nothing was written" in err
    assert snapshot(world) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("victim", ["results.jsonl", "requests.jsonl", "accounts.jsonl"])
def test_another_name_for_a_file_is_the_same_file(world: Path, link: str, victim: str, capsys: pytest.CaptureFixture[str]) -> None:
    alias = world / "elsewhere" / "summary.json"
    alias.parent.mkdir()
    (os.symlink if link == "symlink" else os.link)(world / victim, alias)
    before = snapshot(world)
    code, err = run(world, "--accounts", str(world / "accounts.jsonl"), "--summary_json", str(alias), capsys=capsys)
    assert code == 2 and "is the same file as" in err
    assert snapshot(world) == before


def test_a_not_yet_made_output_reached_through_a_symlinked_directory_is_the_same_file(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink(world, world / "same_dir")
    before = snapshot(world)
    code, err = run(world, "--summary_json", str(world / "out.json"), "--report", str(world / "same_dir" / "out.json"), capsys=capsys)
    assert code == 2 and "--report" in err and "is the same file as --summary_json" in err
    assert snapshot(world) == before and not (world / "out.json").exists()


@pytest.mark.parametrize("victim", ["requests.jsonl", "accounts.jsonl"])
def test_an_input_or_accounts_file_where_a_sidecar_goes_is_refused(world: Path, victim: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The results named so that their lock or index is the input (or the accounts): the sidecar would overwrite it."""
    os.rename(world / victim, world / "out.jsonl.index")
    (world / "out.jsonl").touch()
    accounts = world / ("out.jsonl.index" if victim == "accounts.jsonl" else "accounts.jsonl")
    requests = world / ("out.jsonl.index" if victim == "requests.jsonl" else "requests.jsonl")
    before = snapshot(world)
    code = main(["--requests_filepath", str(requests), "--save_filepath", str(world / "out.jsonl"), "--request_url", URL,
                 "--accounts", str(accounts)])
    err = capsys.readouterr().err
    assert code == 2 and "the index file beside the results" in err
    assert snapshot(world) == before


def test_the_batch_record_may_not_be_the_input(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.rename(world / "requests.jsonl", world / "results.jsonl.batches")
    before = snapshot(world)
    code = main(["--requests_filepath", str(world / "results.jsonl.batches"), "--save_filepath", str(world / "results.jsonl"),
                 "--request_url", "http://127.0.0.1:9/v1", "--mode", "batch", "--api_key", "sk-test-0123456789"])
    assert code == 2 and "the batches file beside the results" in capsys.readouterr().err
    assert snapshot(world) == before


def test_the_library_refuses_a_sidecar_that_is_the_input(world: Path) -> None:
    os.rename(world / "requests.jsonl", world / "results.jsonl.lock")
    before = snapshot(world)
    settings = Settings(request_url=URL, api_key=None, limits=UNLIMITED)
    with pytest.raises(UsageError, match="the lock file beside the results"):
        asyncio.run(run_file_job(settings, world / "results.jsonl.lock", world / "results.jsonl", show_progress=False))
    assert snapshot(world) == before


def test_a_summary_that_cannot_be_written_leaves_no_earlier_summary_claiming_success(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with small_disk(world / "disk") as disk:
        summary = disk / "summary.json"
        summary.write_text(json.dumps({"exit_code": 0, "exit_meaning": "every request succeeded"}))
        fill(disk)
        # The run cannot reach its server (nothing listens) and stops; its summary cannot be written.
        code, err = run(world, "--summary_json", str(summary), "--max_attempts", "1", capsys=capsys)
        assert code == 3
        assert f"--summary_json: cannot write {summary}: No space left on device" in err and "Traceback" not in err
        assert "the earlier summary there was removed" in err
        assert not summary.exists()
        assert [path.name for path in disk.iterdir()] == ["filler"]  # no temporary file left behind
