"""The command as users run it (a subprocess), and the shipped examples, against the mock API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.child import MockProcess
from tests.helpers import chat_request, read_rows, run_cli, serving, unused_port, write_jsonl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_cookbook_command_line_processes_a_file_and_prints_a_summary(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(200)])
    async with MockServer(MockConfig(requests_per_minute=12_000, tokens_per_minute=2_000_000)) as server:
        code, stdout, stderr = await run_cli(
            "--requests_filepath", str(input_path),
            "--request_url", server.url("chat/completions"),
            "--max_requests_per_minute", "12000", "--max_tokens_per_minute", "2000000",
            "--token_encoding_name", "cl100k_base", "--max_attempts", "5", "--logging_level", "20",
        )
    assert code == 0, stderr
    rows = read_rows(tmp_path / "questions_results.jsonl")  # the cookbook's default save path
    assert sorted(row[2]["id"] for row in rows) == list(range(200))
    assert stderr.count("sending, attempt 1/5") == 200  # INFO: one line per send...
    assert stderr.count("succeeded on attempt 1") == 200  # ...and one per success
    assert "succeeded      200" in stderr and "of the 12,000 limit" in stderr
    assert stdout == ""


async def test_command_exit_code_3_when_the_run_is_stopped(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(20)])
    async with MockServer(MockConfig(faults={"insufficient_quota": 1.0})) as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(input_path), "--request_url", server.url("chat/completions"),
        )
    assert code == 3
    assert "STOPPED EARLY" in stderr and "insufficient_quota" in stderr and "rerun" in stderr


def test_library_example_runs() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "library_usage.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("-> 8 numbers") == 4
    assert "4 succeeded" in result.stdout


@pytest.mark.e2e
def test_the_sync_and_custom_transport_examples_run() -> None:
    sync = subprocess.run([sys.executable, str(EXAMPLES / "sync_usage.py")], capture_output=True, text=True, timeout=60)
    assert sync.returncode == 0, sync.stderr
    assert sync.stdout.count("-> 8 numbers") == 4
    custom = subprocess.run([sys.executable, str(EXAMPLES / "custom_transport.py")], capture_output=True, text=True, timeout=60)
    assert custom.returncode == 0, custom.stderr
    assert "60 of 60 answered" in custom.stdout and "'7 noitseuq'" in custom.stdout


def python_snippets() -> list[tuple[str, str]]:
    """(where, code) of every Python snippet of the README and the Python API's page: each a whole program."""
    snippets = []
    for page in (EXAMPLES.parent / "README.md", EXAMPLES.parent / "docs" / "python-api.md"):
        text = page.read_text(encoding="utf-8")
        snippets += [(f"{page.name} #{number}", code) for number, code in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL), 1)]
    return snippets


@pytest.mark.parametrize(("where", "snippet"), python_snippets(), ids=[where for where, _ in python_snippets()])
def test_the_documented_python_snippets_run_as_pasted(tmp_path: Path, where: str, snippet: str) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(snippet, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, f"{where}:\n{snippet}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), f"{where} printed nothing"
    if "reverse_model" in snippet:
        assert "desserts" in result.stdout
    if "run_virtual" in snippet:
        assert "virtual seconds" in result.stdout


def test_every_page_of_python_snippets_has_them() -> None:
    assert [where.split(" ")[0] for where, _ in python_snippets()].count("python-api.md") >= 5
    assert any(where.startswith("README.md") for where, _ in python_snippets())


@pytest.mark.e2e
def test_every_example_runs_to_exit_0() -> None:
    """The README promises it: every examples/*.py of a fresh clone runs as it is."""
    for example in sorted(EXAMPLES.glob("*.py")):
        result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=180, cwd=EXAMPLES.parent)
        assert result.returncode == 0, f"{example.name}: {result.stderr[-2000:]}"


def test_sample_request_files_are_valid_requests() -> None:
    for name, field in (("chat_requests.jsonl", "messages"), ("embedding_requests.jsonl", "input")):
        lines = (EXAMPLES / name).read_text().splitlines()
        assert lines and all(field in json.loads(line) for line in lines)


async def test_command_runs_the_sample_file_against_the_mock(tmp_path: Path) -> None:
    save_path = tmp_path / "out.jsonl"
    async with MockServer() as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(EXAMPLES / "embedding_requests.jsonl"), "--save_filepath", str(save_path),
            "--request_url", server.url("embeddings"),
        )
    assert code == 0, stderr
    assert len(read_rows(save_path)) == 3


async def test_dry_run_plans_without_sending_or_writing(tmp_path: Path) -> None:
    requests = [chat_request(i, max_tokens=100) for i in range(120)] + ["not json"]
    input_path = write_jsonl(tmp_path / "questions.jsonl", requests)
    async with MockServer() as server:
        code, stdout, _ = await run_cli(
            "--requests_filepath", str(input_path), "--request_url", server.url("chat/completions"), "--dry_run",
            "--max_requests_per_minute", "60", "--max_tokens_per_minute", "1000000", "--token_encoding_name", "cl100k_base",
        )
        assert len(server.record) == 0
    assert code == 0
    assert not (tmp_path / "questions_results.jsonl").exists()
    assert "120 to send (120 /chat/completions)" in stdout
    assert "invalid lines    1" in stdout and "line 121: not valid JSON" in stdout
    assert "binding limit    requests" in stdout and "expected time    2m00s" in stdout  # 120 requests at 60/min


async def test_extra_headers_are_sent_and_no_key_is_needed_for_a_server_that_wants_none(tmp_path: Path) -> None:
    seen: list[str] = []
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.headers.get('X-Gateway-Token')}|{request.headers.get('Authorization')}")
        return web.json_response({"object": "list", "data": [{"embedding": [0.0], "index": 0}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/embeddings", handler)
    async with serving(app) as origin:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(EXAMPLES / "embedding_requests.jsonl"), "--save_filepath", str(tmp_path / "out.jsonl"),
            "--request_url", f"{origin}/v1/embeddings", "--header", "X-Gateway-Token: tok-123",
        )
    assert code == 0, stderr
    assert seen == ["tok-123|None"] * 3


def test_a_header_without_a_colon_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from rate_limited_processor.cli import main

    code = main(["--requests_filepath", str(EXAMPLES / "embedding_requests.jsonl"), "--header", "NoColonHere"])
    assert code == 2 and "expected 'Name: value'" in capsys.readouterr().err


@pytest.mark.e2e
def test_the_tour_of_features_runs() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "tour.py")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("(exit code 0)") == 5
    assert "binding limit    tokens" in out
    assert "charged about" in out  # learned that the server counts differently
    assert '"custom_id": "q-1"' in out
    assert "rows in the output, in order: [1, 2, 3]" in out


def run_on_a_terminal(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its stderr (and stdout), as a person at a shell would."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # 200 columns: the whole bar
    process = subprocess.Popen([sys.executable, "-m", "rate_limited_processor", *argv], stdin=subprocess.DEVNULL, stdout=terminal_fd, stderr=terminal_fd)
    os.close(terminal_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_resumed_run_starts_its_bar_at_what_was_done_and_rates_only_this_runs_work(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(30)]
    input_path = write_jsonl(tmp_path / "questions.jsonl", requests)
    done_rows = [[{k: v for k, v in body.items() if k != "metadata"}, {"choices": []}, body["metadata"]] for body in requests[:20]]
    save_path = write_jsonl(tmp_path / "results.jsonl", done_rows)
    with MockProcess("--requests_per_minute", "600", "--tokens_per_minute", "100000") as mock:
        code, out = run_on_a_terminal([
            "--requests_filepath", str(input_path), "--save_filepath", str(save_path), "--request_url", mock.url("chat/completions"),
            "--token_encoding_name", "cl100k_base",
        ])
    assert code == 0, out
    assert "resumed, 20 done before" in out and "20/30" in out and "30/30" in out
    assert "/600 RPM" in out and "(learned)" in out  # the limits learned from the API are on the bar
    rates = [float(rate) for rate in re.findall(r"(\d+\.\d+)req/s", out)]
    assert rates and max(rates) <= 12  # this run's 10 requests at 600 RPM (10/s); counting the 20 skipped would say ~30/s
    assert "already done   20" in out and "succeeded      10" in out


@pytest.mark.e2e
async def test_nothing_listening_exits_3_within_20_seconds_and_writes_no_row(tmp_path: Path) -> None:
    port = unused_port()
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(3_000)])
    output_path = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, _, stderr = await run_cli(
        "--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", f"http://127.0.0.1:{port}/v1/chat/completions"
    )
    assert code == 3, stderr
    assert time.monotonic() - started < 20 + 5  # 20 s, plus the interpreter's start-up on a loaded machine
    assert f"127.0.0.1:{port}/v1/chat/completions" in stderr and "none succeeded" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["questions.jsonl"]  # no empty results file, no index


@pytest.mark.e2e
async def test_a_path_that_404s_exits_3_and_the_rerun_at_the_right_url_writes_every_line_once(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(3_000)])
    output_path = tmp_path / "out.jsonl"
    paths = ("--requests_filepath", str(input_path), "--save_filepath", str(output_path))
    async with MockServer() as server:
        wrong = server.origin + "/chat/completions"  # the /v1 left out: the server has no such path
        started = time.monotonic()
        code, _, stderr = await run_cli(*paths, "--request_url", wrong, "--max_requests_per_minute", "60000")
        assert code == 3, stderr
        assert time.monotonic() - started < 20 + 5 and "HTTP 404" in stderr
        assert len(server.record) < 100  # one request at a time while nothing works
        assert f"did you mean {server.url('chat/completions')}?" in stderr
        assert not output_path.exists() and not Path(f"{output_path}.index").exists()  # nothing left behind
        code, _, stderr = await run_cli(*paths, "--request_url", server.url("chat/completions"), "--max_requests_per_minute", "60000")
    assert code == 0, stderr
    rows = read_rows(output_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(3_000)) and all(isinstance(row[1], dict) for row in rows)


@pytest.mark.parametrize("mistake", ["no /v1", "https to plain http"])
async def test_a_url_that_fails_every_request_stops_with_the_likely_url_and_leaves_no_file(tmp_path: Path, mistake: str) -> None:
    from rate_limited_processor import RetryPolicy, Settings, run_file_job

    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(20)])
    output_path = tmp_path / "out.jsonl"
    async with MockServer() as server:
        right = server.url("chat/completions")
        wrong = server.origin + "/chat/completions" if mistake == "no /v1" else right.replace("http://", "https://")
        settings = Settings(request_url=wrong, api_key=None, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01))
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    assert stats.stop_reason is not None and "none succeeded" in stats.stop_reason
    assert stats.stop_reason.endswith(f"(did you mean {right}?)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["questions.jsonl"]  # no empty results file, no .index, no .lock


async def test_a_run_that_writes_rows_keeps_its_file_and_an_earlier_file_is_never_removed(tmp_path: Path) -> None:
    from rate_limited_processor import RetryPolicy, Settings, run_file_job

    input_path = write_jsonl(tmp_path / "questions.jsonl", [chat_request(i) for i in range(3)])
    output_path = tmp_path / "out.jsonl"
    output_path.touch()  # the user's own empty file: a fresh start, but not this run's to remove
    async with MockServer() as server:
        settings = Settings(request_url=server.origin + "/chat/completions", api_key=None, retry=RetryPolicy(max_attempts=1))
        stopped = await run_file_job(settings, input_path, output_path, show_progress=False)
        assert stopped.stop_reason is not None and output_path.exists()
        output_path.unlink()
        done = await run_file_job(Settings(request_url=server.url("chat/completions"), api_key=None), input_path, output_path, show_progress=False)
    assert done.succeeded == 3 and len(read_rows(output_path)) == 3
