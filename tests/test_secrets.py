"""A distinctive API key must appear nowhere: logs, output rows, summary, error text, reprs."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from rate_limited_processor import UNLIMITED, Processor, RetryPolicy, Secret, Settings, run_file_job
from rate_limited_processor.credentials import Scrubber
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import chat_request, run_cli, write_jsonl

KEY = "sk-proj-DISTINCTIVE0123456789abcdefSECRETvalue"


def test_secret_and_settings_never_show_the_key() -> None:
    settings = Settings(request_url="https://api.openai.com/v1/chat/completions", api_key=KEY)
    assert isinstance(settings.api_key, Secret)
    for text in (repr(settings), str(settings), f"{settings.api_key}", repr(settings.api_key), repr(Processor(settings))):
        assert KEY not in text


def test_scrubber_replaces_every_secret_longest_first() -> None:
    scrub = Scrubber([KEY, KEY[:20], "ab"])
    assert scrub(f"key={KEY} prefix={KEY[:20]} ab") == "key=*** prefix=*** ab"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "mock",
    [
        # Every retryable and final error path, with the right key.
        MockConfig(api_key=KEY, faults={"500": 0.1, "reset": 0.1, "hang": 0.05, "html_502": 0.1, "too_large": 0.05, "azure_429": 0.05}, seed=3),
        # The wrong key: the server's 401 names a masked key; the run stops.
        MockConfig(api_key="sk-some-other-key-entirely-000000000000"),
    ],
    ids=["faults", "401"],
)
async def test_key_appears_nowhere_on_any_error_path_of_the_command(tmp_path: Path, mock: MockConfig) -> None:
    requests = [chat_request(i) for i in range(60)] + [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 500, "max_tokens": 1}]
    input_path = write_jsonl(tmp_path / "requests.jsonl", [*requests, "not json"])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(mock) as server:
        code, stdout, stderr = await run_cli(
            "--requests_filepath", str(input_path), "--save_filepath", str(output_path),
            "--request_url", server.url("chat/completions"), "--api_key", KEY,
            "--max_attempts", "2", "--request_timeout", "0.5", "--logging_level", "DEBUG",
        )
        assert len(server.record) > 0
    assert code in (1, 3), stderr
    assert "summary" in stderr  # the run really ran and printed its summary
    for text in (stdout, stderr, output_path.read_text()):
        assert KEY not in text
        assert KEY[8:30] not in text  # nor a long piece of it


async def test_key_appears_nowhere_when_the_server_cannot_be_reached(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(3)])
    output_path = tmp_path / "results.jsonl"
    settings = Settings(
        request_url=f"http://127.0.0.1:{closed_port()}/v1/chat/completions", api_key=KEY, limits=UNLIMITED,
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01), extra_headers={"X-Extra-Auth": "header-secret-value"},
    )
    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    # Nothing listens there: the run stops, naming the cause, and records nothing (a rerun sends every line).
    assert stats.stop_reason is not None and "none succeeded" in stats.stop_reason and output_path.read_text() == ""
    text = caplog.text + stats.stop_reason
    assert "Connect" in text  # the error itself is reported...
    assert KEY not in text and "header-secret-value" not in text  # ...without the credentials


async def test_azure_urls_send_the_key_as_api_key_header() -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server:
        settings = Settings(request_url=server.azure_url("chat/completions"), api_key=KEY, limits=UNLIMITED)
        results = [result async for result in Processor(settings).process([chat_request(1)])]
    assert results[0].succeeded, results[0].errors


def test_a_crash_is_reported_without_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rate_limited_processor import cli

    async def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"a bug that formats its headers: Authorization: Bearer {KEY}")

    monkeypatch.setattr(cli, "run_file_job", crash)
    requests = write_jsonl(tmp_path / "requests.jsonl", [chat_request(1)])
    code = cli.main(["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--api_key", KEY])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" in err and "a bug that formats its headers" in err  # the report is useful...
    assert KEY not in err  # ...and safe


@pytest.mark.parametrize("key", ["sk-with\x00nul", "sk-with space", "sk-line\nbreak-inside"])
def test_keys_that_cannot_be_sent_are_refused_up_front_without_showing_them(key: str) -> None:
    with pytest.raises(ValueError) as error:
        Settings(request_url="https://api.openai.com/v1/embeddings", api_key=key)
    assert key not in str(error.value)


def test_a_key_read_from_a_file_loses_its_trailing_newline() -> None:
    settings = Settings(request_url="https://api.openai.com/v1/embeddings", api_key="sk-from-a-file\n")
    assert settings.key is not None and settings.key.reveal() == "sk-from-a-file"


def test_the_library_reads_the_key_from_the_environment_unless_told_to_send_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert Settings(request_url="https://api.openai.com/v1/embeddings").key == Secret(KEY)
    assert Settings(request_url="http://localhost:8000/v1/embeddings", api_key=None).key is None
    monkeypatch.delenv("OPENAI_API_KEY")
    assert Settings(request_url="https://api.openai.com/v1/embeddings").key is None
