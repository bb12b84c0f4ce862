"""A distinctive API key must appear nowhere: logs, output rows, summary, error text, reprs."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor import UNLIMITED, Processor, RetryPolicy, Secret, Settings, run_file_job
from rate_limited_processor.config.credentials import LEAKED_RUN, Scrubber
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.transport.http import TransportRequest, TransportResponse
from tests.helpers import chat_request, read_rows, run_cli, serving, unused_port, write_jsonl
from tests.virtual_time import run_virtual

KEY = "sk-proj-DISTINCTIVE0123456789abcdefSECRETvalue"


def test_secret_and_settings_never_show_the_key() -> None:
    settings = Settings(request_url="https://api.openai.com/v1/chat/completions", api_key=KEY)
    assert isinstance(settings.api_key, Secret)
    for text in (repr(settings), str(settings), f"{settings.api_key}", repr(settings.api_key), repr(Processor(settings))):
        assert KEY not in text


def test_scrubber_replaces_every_secret_longest_first() -> None:
    scrub = Scrubber([KEY, KEY[:20], "ab"])
    assert scrub(f"key={KEY} prefix={KEY[:20]} ab") == "key=*** prefix=*** ab"


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
    for text in (stdout, stderr, output_path.read_text() if output_path.exists() else ""):  # a run with no row leaves no file
        assert KEY not in text
        assert KEY[8:30] not in text  # nor a long piece of it


async def test_key_appears_nowhere_when_the_server_cannot_be_reached(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(3)])
    output_path = tmp_path / "results.jsonl"
    settings = Settings(
        request_url=f"http://127.0.0.1:{unused_port()}/v1/chat/completions", api_key=KEY, limits=UNLIMITED,
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01), extra_headers={"X-Extra-Auth": "header-secret-value"},
    )
    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    # Nothing listens there: the run stops, naming the cause, and records nothing (a rerun sends every line).
    assert stats.stop_reason is not None and "none succeeded" in stats.stop_reason and not output_path.exists()
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
    from rate_limited_processor.cli import dispatch

    async def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"a bug that formats its headers: Authorization: Bearer {KEY}")

    monkeypatch.setattr(dispatch, "run_file_job", crash)
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


# -- a server that echoes the request's headers back, escaped -------------------------------------------------

#: A --header value with slashes, which JSON may escape as \/.
GATEWAY_SECRET = "gw/token/SECRET-0123456789"


def escaped_everywhere(text: str) -> str:
    """Every character as \\uXXXX: what a hostile (or ensure_ascii-happy) server can do to any string."""
    return "".join(f"\\u{ord(char):04x}" for char in text)


def hostile_json(value: Any, how: str) -> bytes:
    """JSON in which the credentials are escaped so that the raw bytes never hold them."""
    text = json.dumps(value)
    for secret in (KEY, GATEWAY_SECRET):
        if how == "slashes":
            text = text.replace(json.dumps(secret)[1:-1], secret.replace("/", "\\/").replace("-", "\\u002d"))
        else:
            text = text.replace(json.dumps(secret)[1:-1], escaped_everywhere(secret))
    body = text.encode()
    assert KEY.encode() not in body and GATEWAY_SECRET.encode() not in body  # a scrub of the raw text finds nothing
    return body


@pytest.fixture
async def echo_server() -> Any:
    """Chat completions that echo the request's headers: in a 200, in a 400 with and without a message, in an
    unreadable 200 (1e400), and in the x-request-id header."""
    attempts: Counter[str] = Counter()

    async def echo(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        content = body["messages"][-1]["content"]
        attempts[content] += 1
        headers = dict(request.headers)
        how = "slashes" if "slashes" in content else "unicode"
        echoed = {"Authorization": headers.get("Authorization"), "X-Gateway": headers.get("X-Gateway"), KEY: "the key as a key"}
        reply_headers = {"x-request-id": f"req-{headers.get('Authorization')}"}
        if content.startswith("fail"):
            error = {"error": {"message": f"Bad header {headers.get('Authorization')}", "type": "invalid_request_error", "echo": echoed}}
            return web.Response(status=400, body=hostile_json(error, how), content_type="application/json", headers=reply_headers)
        if content.startswith("bare"):  # an error with no message: its text is what the reason shows
            return web.Response(status=400, body=hostile_json({"echo": echoed}, how), content_type="application/json", headers=reply_headers)
        if content.startswith("unreadable") and attempts[content] == 1:
            raw = hostile_json({"choices": [], "echo": echoed}, how)[:-1] + b', "n": 1e400}'
            return web.Response(status=200, body=raw, content_type="application/json", headers=reply_headers)
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "echo": echoed}
        return web.Response(status=200, body=hostile_json(answer, how), content_type="application/json", headers=reply_headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    async with serving(app) as origin:
        yield f"{origin}/v1/chat/completions"


def strings_in(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included: what any reader of the row sees once it is parsed."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *strings_in(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


@pytest.mark.parametrize("output_format", ["cookbook", "batch"])
async def test_escaped_echoes_of_the_key_reach_no_row_and_no_log(
    tmp_path: Path, echo_server: str, output_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    contents = [f"{kind} {how}" for kind in ("ok", "fail", "bare", "unreadable") for how in ("slashes", "unicode")]
    requests = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "metadata": {"id": i}} for i, content in enumerate(contents)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    settings = Settings(
        request_url=echo_server, api_key=KEY, limits=UNLIMITED, extra_headers={"X-Gateway": GATEWAY_SECRET},
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01),
    )
    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        stats = await run_file_job(settings, input_path, output_path, show_progress=False, output_format=output_format)  # type: ignore[arg-type]
    assert (stats.succeeded, stats.failed) == (4, 4)
    raw = output_path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in raw.splitlines()]
    assert "***" in raw  # the echoes were there, and were scrubbed...
    for secret in (KEY, GATEWAY_SECRET):
        assert secret not in raw and secret not in caplog.text
        assert not [text for row in rows for text in strings_in(row) if secret in text]  # ...in every decoded string too
    for secret in (KEY, GATEWAY_SECRET):  # and no escaped form survives in the raw file or a log line either
        for text in (raw, caplog.text):
            assert escaped_everywhere(secret) not in text and secret.replace("/", "\\/").replace("-", "\\u002d") not in text


def test_scrubbing_a_decoded_body_walks_it_only_when_its_text_could_hide_a_secret() -> None:
    scrub = Scrubber([KEY, GATEWAY_SECRET])
    plain = {"choices": [{"message": {"content": "nothing to see, even\\nwith a newline escape"}}]}
    text = json.dumps(plain)
    assert not scrub.may_hide_a_secret(text)
    assert scrub.scrub_decoded(plain, text) is plain  # not walked, not copied: the common case costs nothing
    echoed = {KEY: [f"Bearer {KEY}", {"nested": GATEWAY_SECRET}], "n": 1}
    text = json.dumps(echoed).replace("/", "\\/")
    assert scrub.scrub_decoded(echoed, text) == {"***": ["Bearer ***", {"nested": "***"}], "n": 1}
    assert scrub.scrub_json_text('{"m": "' + escaped_everywhere(KEY) + '"}', 2_000) == '{"m": "***"}'
    assert Scrubber([]).may_hide_a_secret("\\u0073k-anything") is False  # no secrets, nothing to hide


# -- a server that echoes part of the key ---------------------------------------------------------------------


def leaked_runs(secret: str, text: str) -> list[str]:
    """Every run of LEAKED_RUN characters of `secret` that `text` holds."""
    return [secret[i : i + LEAKED_RUN] for i in range(len(secret) - LEAKED_RUN + 1) if secret[i : i + LEAKED_RUN] in text]


@pytest.mark.parametrize(
    "echo",
    [KEY[:-1], KEY[9:], KEY[:20] + "X" + KEY[21:], KEY[3:40], f"prefix{KEY[:30]}", KEY[:25] + "\n" + KEY[25:]],
    ids=["cut short", "from its tenth character", "one character changed", "a middle run", "run on from other text", "split by an escape"],
)
def test_any_run_of_23_characters_of_a_key_is_scrubbed(echo: str) -> None:
    scrub = Scrubber([KEY])
    assert leaked_runs(KEY, echo), "the echo holds part of the key"
    assert scrub.may_hide_a_secret(json.dumps({"m": echo}))
    for text in (scrub(echo), scrub.scrub_json_text(json.dumps({"m": echo}), 2_000), json.dumps(scrub.scrub_decoded({"m": echo}, json.dumps({"m": echo})))):
        assert "***" in text and not leaked_runs(KEY, text), text


def test_a_short_run_of_a_key_and_ordinary_text_are_left_as_they_are() -> None:
    scrub = Scrubber([KEY])
    text = f"ordinary text, and {KEY[:LEAKED_RUN - 8]}, a piece too short to be worth anything"
    assert scrub(text) == text
    assert not scrub.may_hide_a_secret(json.dumps({"m": "nothing like a key"}))


def test_a_server_echoing_part_of_the_key_leaves_none_of_it_in_a_row_or_a_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def answer(request: TransportRequest) -> TransportResponse:
        sent = request.headers["Authorization"].removeprefix("Bearer ")
        content = request.body["messages"][-1]["content"]
        if content.startswith("fail"):
            error = {"error": {"message": f"Incorrect API key provided: {sent[:-2]}.", "type": "invalid_request_error", "code": "bad"}}
            return TransportResponse(400, {"content-type": "application/json", "x-request-id": f"req-{sent[6:]}"}, json.dumps(error).encode())
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"you sent {sent[10:]}"}}]}
        return TransportResponse(200, {"content-type": "application/json"}, json.dumps(answer).replace("/", "\\/").encode())

    kinds = ["ok", "fail"] * 3
    requests = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{kind} {i}"}], "metadata": {"id": i}} for i, kind in enumerate(kinds)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    settings = Settings(request_url="https://api.openai.com/v1/chat/completions", api_key=KEY, limits=UNLIMITED)
    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        stats = run_virtual(run_file_job(settings, input_path, output_path, show_progress=False, transport=answer))
    assert (stats.succeeded, stats.failed) == (3, 3)
    raw = output_path.read_text(encoding="utf-8")
    assert "***" in raw and len(read_rows(output_path)) == 6
    assert not leaked_runs(KEY, raw) and not leaked_runs(KEY, caplog.text)
    assert not [text for row in read_rows(output_path) for text in strings_in(row) if leaked_runs(KEY, text)]
