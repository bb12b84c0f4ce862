"""The command line's contract: cookbook flags, --help, and usage errors as one line with exit code 2 that name
the real mistake and what to do. In process (`main([...])` with capsys) wherever that shows the same thing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rate_limited_processor.cli import EXIT_USAGE, build_parser, main, settings_from_args
from rate_limited_processor.mock_server.child import MockProcess
from tests.helpers import chat_request, write_jsonl

COOKBOOK_FLAGS = [
    "--requests_filepath", "--save_filepath", "--request_url", "--api_key", "--max_requests_per_minute",
    "--max_tokens_per_minute", "--token_encoding_name", "--max_attempts", "--logging_level",
]


def test_help_documents_every_flag_with_its_default() -> None:
    result = subprocess.run([sys.executable, "-m", "rate_limited_processor", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())  # argparse wraps lines to the terminal width
    for flag in [*COOKBOOK_FLAGS, "--request_timeout", "--max_in_flight"]:
        assert flag in text
    assert text.count("(default: auto)") == 4 and "(default: 600.0)" in text and "(default: 1.0)" in text
    assert "exit codes" in text


def test_help_is_in_groups_and_ends_with_two_examples() -> None:
    help_text = build_parser().format_help()
    headings = [line for line in help_text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[1:] == [
        "input and output:", "limits (per minute; auto: learned from the API's headers):", "retries and timeouts:",
        "accounts and providers:", "Batch mode:", "benchmarking:", "display:", "examples:",
    ]
    examples = help_text.split("examples:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    commands = [line.split() for line in examples.splitlines() if line.startswith("  python -m rate_limited_processor ")]
    assert len(commands) == 2
    for command in commands:  # each example, continuation lines joined, parses as it is written
        args = build_parser().parse_args(command[3:])
        assert args.requests_filepath and args.request_url
    assert help_text.count("\n") < 215 and help_text.splitlines()[0].startswith("usage: ")


def test_help_fits_an_80_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    lines = build_parser().format_help().splitlines()
    assert max(map(len, lines)) <= 80, max(lines, key=len)


def test_cookbook_command_line_parses_to_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    args = build_parser().parse_args([
        "--requests_filepath", "r.jsonl", "--request_url", "https://api.openai.com/v1/chat/completions",
        "--max_requests_per_minute", "500", "--max_tokens_per_minute", "200000", "--max_attempts", "3",
        "--logging_level", "20", "--token_encoding_name", "cl100k_base",
    ])
    settings = settings_from_args(args)
    assert settings.limits.requests_per_minute == 500 and settings.limits.tokens_per_minute == 200_000
    auto = settings_from_args(build_parser().parse_args(["--requests_filepath", "r.jsonl", "--max_tokens_per_minute", "auto"]))
    assert auto.limits.requests_per_minute is None and auto.limits.tokens_per_minute is None
    assert settings.retry.max_attempts == 3
    assert settings.key is not None and settings.key.reveal() == "sk-from-env"
    assert args.logging_level == 20
    assert "sk-from-env" not in repr(settings)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits on its own errors
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_requests_per_minute", "0"], "expected a positive number"),
        (["--max_tokens_per_minute", "lots"], "expected a number"),
        (["--max_attempts", "0"], "expected at least 1"),
        (["--logging_level", "LOUD"], "unknown logging level"),
        (["--request_url", "https://api.openai.com/v1/images/generations"], "cannot estimate token cost"),
        (["--token_encoding_name", "no_such_encoding"], "unknown encoding"),
        (["--bogus"], "unknown flag --bogus"),
        (["--stream"], "--stream: embeddings are not streamed"),  # the default URL is the embeddings endpoint
        (["--arrivals", "poisson", "--request_url", "http://127.0.0.1:9/v1/chat/completions"], "--arrivals poisson needs a rate"),
        (["--arrivals", "uniform"], "invalid choice: 'uniform'"),
        (["--request_rate", "0"], "expected a positive number"),
        (["--report", "r.jsonl"], "is the same file as the input (--requests_filepath)"),
        (["--report_html", "missing_dir/page.html"], "--report_html"),
        (["--mode", "batch", "--batch_max_lines", "100001"], "no batch API takes more than 100,000 requests in a batch"),
        (["--mode", "batch", "--batch_max_lines", "50001"], "--batch_max_lines 50,001: OpenAI's batch API takes at most 50,000 requests"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"input": "x"}\n')
    extra = [str(tmp_path / value) if value.endswith((".jsonl", ".html")) else value for value in extra]
    code, err = run_main(["--requests_filepath", str(requests), *extra], capsys)
    assert code == EXIT_USAGE
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_input_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["--requests_filepath", str(tmp_path / "absent.jsonl")], capsys)
    assert code == EXIT_USAGE and "no such file" in err and len(err.strip().splitlines()) == 1


def test_unwritable_output_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"input": "x"}\n')
    code, err = run_main(["--requests_filepath", str(requests), "--save_filepath", str(tmp_path / "no_dir" / "out.jsonl")], capsys)
    assert code == EXIT_USAGE and "cannot write" in err


def test_output_may_not_overwrite_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"input": "x"}\n')
    code, err = run_main(["--requests_filepath", str(requests), "--save_filepath", str(requests)], capsys)
    assert code == EXIT_USAGE and "same file as the input" in err


# -- flags: typos, dashes, --version --------------------------------------------------------------------

#: A valid value for every flag, spelled with dashes; None for a switch. A flag added to the parser must be added here.
DASHED_FLAGS: dict[str, str | None] = {
    "--requests-filepath": "r.jsonl", "--save-filepath": "o.jsonl", "--request-url": "http://127.0.0.1:8000/v1/chat/completions",
    "--api-key": "sk-test", "--max-requests-per-minute": "500", "--max-tokens-per-minute": "1000", "--headroom": "0.5",
    "--token-encoding-name": "cl100k_base", "--max-attempts": "3", "--logging-level": "INFO", "--request-timeout": "5",
    "--max-in-flight": "7", "--burst-seconds": "2", "--no-progress": None, "--status-interval": "5", "--summary-json": "s.json",
    "--show-limits": None, "--output-format": "batch", "--header": "X-Gateway: on", "--service-tier": "flex", "--dry-run": None, "--ordered": None,
    "--ordered-window": "9", "--redis-url": "redis://localhost:6379/0", "--limit-key": "team-a", "--retry-failed": None,
    "--metrics-port": "9464", "--metrics-host": "0.0.0.0",
    "--shutdown-grace": "4", "--max-input-tokens-per-minute": "1000", "--max-output-tokens-per-minute": "800",
    "--accounts": "accounts.jsonl", "--stream": None, "--arrivals": "poisson", "--request-rate": "12.5", "--report": "b.json",
    "--report-html": "b.html",
    "--max-requests-per-day": "300", "--max-tokens-per-day": "90000",
    "--max-cost-usd": "2.5", "--price-input-per-mtok": "0.15", "--price-output-per-mtok": "0.6", "--mode": "batch",
    "--batch-max-lines": "500", "--batch-poll-interval": "5", "--batch-fallback": "online", "--deadline": "6h",
}


def test_every_flag_may_be_spelled_with_dashes() -> None:
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings if option not in ("-h", "--help", "--version")}
    assert flags == {"--" + flag[2:].replace("-", "_") for flag in DASHED_FLAGS}
    dashed: list[str] = []
    underscored: list[str] = []
    for flag, value in DASHED_FLAGS.items():
        dashed += [flag] if value is None else [f"{flag}={value}"] if flag == "--headroom" else [flag, value]
        underscored += ["--" + flag[2:].replace("-", "_")] + ([] if value is None else [value])
    assert build_parser().parse_args(dashed) == build_parser().parse_args(underscored)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--requests_filepath", "r.jsonl", "--max_request_per_minute", "5"], "unknown flag --max_request_per_minute; did you mean --max_requests_per_minute?"),
        # The typo is reported, not the missing flag it hides.
        (["--request_filepath", "r.jsonl"], "unknown flag --request_filepath; did you mean --requests_filepath?"),
        (["--requests_filepath", "r.jsonl", "--max-request-per-minute=5"], "unknown flag --max-request-per-minute; did you mean --max_requests_per_minute?"),
        (["--requests_filepath", "r.jsonl", "--timeout", "5"], "did you mean --request_timeout?"),
        ([], "--requests_filepath is required"),
        (["--requests_filepath", "r.jsonl", "stray.jsonl"], "unexpected argument 'stray.jsonl'"),
    ],
)
def test_a_mistyped_or_missing_flag_is_named_with_a_suggestion(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(argv, capsys)
    assert code == EXIT_USAGE
    assert message in err and len(err.strip().splitlines()) == 1
    assert "required" not in err or not argv


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"rate_limited_processor \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


# -- the URL, checked before the input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://127.0.0.1:8000/v1/chat/completion", "--request_url: '/v1/chat/completion' is not an endpoint this tool knows; did you mean http://127.0.0.1:8000/v1/chat/completions?"),
        ("https://api.openai.com/v1/embedding", "did you mean https://api.openai.com/v1/embeddings?"),
        ("http://localhost:8000/v1/chat", "did you mean http://localhost:8000/v1/chat/completions?"),
        (
            "https://r.openai.azure.com/openai/deployments/d/chat/completion?api-version=2024-10-21",
            "did you mean https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21?",
        ),
        ("127.0.0.1:8000/v1/chat/completions", "--request_url: '127.0.0.1:8000/v1/chat/completions' has no scheme; did you mean http://127.0.0.1:8000/v1/chat/completions?"),
        ("api.openai.com/v1/chat/completions", "did you mean https://api.openai.com/v1/chat/completions?"),
        ("htp://127.0.0.1:8000/v1/chat/completions", "the scheme must be http or https, not 'htp'; did you mean http://127.0.0.1:8000/v1/chat/completions?"),
        ("http:///v1/chat/completions", "names no host"),
    ],
)
def test_a_wrong_url_is_refused_at_start_up_before_the_input_is_read(url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["--requests_filepath", str(tmp_path / "not_there.jsonl"), "--request_url", url], capsys)
    assert code == EXIT_USAGE
    assert message in err and "--requests_filepath" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_default_url_with_a_chat_file_says_the_default_is_the_embeddings_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = write_jsonl(tmp_path / "chat.jsonl", [chat_request(i) for i in range(3)])
    code, err = run_main(["--requests_filepath", str(requests)], capsys)
    assert code == EXIT_USAGE
    assert "--request_url was not given" in err and "the embeddings endpoint (https://api.openai.com/v1/embeddings)" in err
    assert "give --request_url https://api.openai.com/v1/chat/completions" in err
    code, err = run_main(["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:8000/v1/embeddings"], capsys)
    assert code == EXIT_USAGE
    assert "--request_url names /embeddings, which needs 'input', but line 1 has 'messages'" in err
    assert "did you mean http://127.0.0.1:8000/v1/chat/completions?" in err
    assert not (tmp_path / "chat_results.jsonl").exists()


# -- the input: JSON Lines, a file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (json.dumps([chat_request(1), chat_request(2)], indent=2), "holds a JSON array, but the input must be JSON Lines: one request object per line; convert it with: jq -c '.[]' "),  # noqa: E501
        (json.dumps([chat_request(1), chat_request(2)]), "holds a JSON array"),  # on one line, too
        (json.dumps(chat_request(1), indent=2), "holds JSON spread over several lines (pretty-printed?), but the input must be JSON Lines"),
        ("prompt,id\nhello,1\nworld,2\n", "looks like CSV (its first line is 'prompt,id'), but the input must be JSON Lines"),
        ('"hello"\n', "its only line is not a usable request: the input must be JSON Lines"),
        ("not json\nnor this\n", "none of its 2 lines is a usable request"),
    ],
)
def test_input_that_is_not_json_lines_says_so_and_how_to_convert_it(content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = tmp_path / "in.json"
    requests.write_text(content + "\n")
    code, err = run_main(["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:8000/v1/chat/completions"], capsys)
    assert code == EXIT_USAGE
    assert message in err
    assert "first 1 lines" not in err
    assert not (tmp_path / "in_results.jsonl").exists()  # refused: no empty output file left behind


def test_a_directory_as_input_is_called_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "jobs").mkdir()
    write_jsonl(tmp_path / "jobs" / "part1.jsonl", [chat_request(1)])
    code, err = run_main(["--requests_filepath", str(tmp_path / "jobs"), "--request_url", "http://127.0.0.1:8000/v1/chat/completions"], capsys)
    assert code == EXIT_USAGE
    assert "is a directory; give the JSONL file itself (it holds part1.jsonl)" in err and "no such file" not in err
    code, err = run_main(["--requests_filepath", str(tmp_path / "jobs" / "part1.jsonl"), "--save_filepath", str(tmp_path), "--request_url",
                          "http://127.0.0.1:8000/v1/chat/completions"], capsys)
    assert code == EXIT_USAGE and "--save_filepath" in err and "is a directory" in err


def test_a_refused_run_leaves_no_empty_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = write_jsonl(tmp_path / "chat.jsonl", [chat_request(i) for i in range(3)])
    url = "http://127.0.0.1:8000/v1/chat/completions"
    for extra in (["--token_encoding_name", "nope"], ["--header", "NoColon"], ["--redis_url", "redis://127.0.0.1:1/0"], ["--api_key", "Bearer sk-x12345"]):
        code, err = run_main(["--requests_filepath", str(requests), "--request_url", url, *extra], capsys)
        assert code == EXIT_USAGE, err
        assert sorted(path.name for path in tmp_path.iterdir()) == ["chat.jsonl"], extra


# -- the key and the redis extra ----------------------------------------------------------------------------


def test_a_key_given_with_bearer_or_in_quotes_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_jsonl(tmp_path / "chat.jsonl", [chat_request(1)])
    argv = ["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:8000/v1/chat/completions"]
    code, err = run_main([*argv, "--api_key", "Bearer sk-secret-123"], capsys)
    assert code == EXIT_USAGE and "--api_key starts with 'Bearer '" in err and "drop 'Bearer '" in err and "sk-secret-123" not in err
    monkeypatch.setenv("OPENAI_API_KEY", "bearer sk-secret-123")
    code, err = run_main(argv, capsys)
    assert code == EXIT_USAGE and "$OPENAI_API_KEY starts with 'Bearer '" in err and "sk-secret-123" not in err
    monkeypatch.setenv("OPENAI_API_KEY", '"sk-secret-123"')
    code, err = run_main(argv, capsys)
    assert code == EXIT_USAGE and "$OPENAI_API_KEY is wrapped in quotes" in err and "sk-secret-123" not in err


def test_redis_url_without_the_redis_extra_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if the package were not installed: `import redis` raises ImportError
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    requests = write_jsonl(tmp_path / "chat.jsonl", [chat_request(1)])
    argv = ["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:8000/v1/chat/completions"]
    code, err = run_main([*argv, "--redis_url", "redis://localhost:6379/0"], capsys)
    assert code == EXIT_USAGE
    assert "--redis_url shares the limits through Redis, which needs the redis extra: pip install 'rate_limited_processor[redis]'" in err
    assert "Traceback" not in err and "internal error" not in err
    monkeypatch.setenv("RATE_LIMITED_PROCESSOR_REDIS_URL", "redis://localhost:6379/0")
    code, err = run_main(argv, capsys)
    assert code == EXIT_USAGE and "$RATE_LIMITED_PROCESSOR_REDIS_URL shares the limits" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chat.jsonl"]


# -- against the mock: a run with --summary_json and status lines, --show_limits --------------------------------


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess("--requests_per_minute", "1200", "--tokens_per_minute", "100000", "--latency", "0.1") as process:
        yield process


def test_a_run_writes_its_summary_as_json_and_prints_status_lines_when_stderr_is_not_a_terminal(
    mock: MockProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_jsonl(tmp_path / "chat.jsonl", [chat_request(i) for i in range(12)] + ["not json"])
    summary_path = tmp_path / "summary.json"
    summary_path.write_text("stale")
    code, err = run_main([
        "--requests_filepath", str(requests), "--request_url", mock.url("chat/completions"), "--token_encoding_name", "cl100k_base",
        "--summary_json", str(summary_path), "--status_interval", "0.25",
    ], capsys)
    assert code == 1  # one invalid line
    summary = json.loads(summary_path.read_text())
    assert (summary["exit_code"], summary["succeeded"], summary["failed"], summary["invalid"], summary["attempts"]) == (1, 12, 0, 1, 12)
    assert "some requests failed or some lines were invalid" in summary["exit_meaning"]
    assert summary["limits"]["given"] == {"requests_per_minute": None, "tokens_per_minute": None}
    assert summary["limits"]["learned"] == {"requests_per_minute": 1_200, "tokens_per_minute": 100_000}  # from the mock's headers
    assert summary["rate_limit_429s"] == 0 and summary["stop_reason"] is None and summary["total"] == 13
    assert 0.1 < summary["elapsed_s"] < 30
    assert f"succeeded      {summary['succeeded']}" in err and f"{summary['attempts']} (0 retries, 0 rate-limit 429s)" in err
    assert re.search(r"\d+/13 done \(\d+%\); last 0\.\ds: 0 retries", err)  # the one-line status, with no terminal
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary file left


def test_summary_json_is_written_for_a_refused_run_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary_path = tmp_path / "summary.json"
    code, err = run_main(["--requests_filepath", str(tmp_path / "absent.jsonl"), "--summary_json", str(summary_path)], capsys)
    assert code == EXIT_USAGE
    summary = json.loads(summary_path.read_text())
    assert summary["exit_code"] == 2 and "no such file" in summary["error"] and summary["succeeded"] == 0
    code, err = run_main(["--requests_filepath", str(tmp_path / "absent.jsonl"), "--summary_json", str(tmp_path / "no_dir" / "s.json")], capsys)
    assert code == EXIT_USAGE and "--summary_json: cannot write" in err


def test_show_limits_prints_the_rate_limit_headers_in_plain_words_and_writes_nothing(
    mock: MockProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = write_jsonl(tmp_path / "chat.jsonl", [{"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}])
    served_before = mock.stats()["total"]
    code = main(["--show_limits", "--request_url", mock.url("chat/completions"), "--requests_filepath", str(requests)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"rate limits for gpt-4.1-nano at {mock.url('chat/completions')}" in out  # the file's model: limits are per model
    assert re.search(r"requests +1,200 per minute; \d+ left now; (full again in \d+ms|full now)", out)
    assert re.search(r"tokens +100,000 per minute; [\d,]+ left now", out)
    assert mock.stats()["total"] == served_before + 1  # one request
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chat.jsonl"]  # no results file


def test_show_limits_against_a_server_that_sends_no_headers(capsys: pytest.CaptureFixture[str]) -> None:
    with MockProcess("--no_ratelimit_headers") as bare:
        code = main(["--show_limits", "--request_url", bare.url("embeddings")])
    out = capsys.readouterr().out
    assert code == 0
    assert "rate limits for text-embedding-3-small" in out and "the API sent no rate-limit headers" in out


def test_show_limits_when_nothing_answers_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--show_limits", "--request_url", "http://127.0.0.1:9/v1/chat/completions"])
    assert code == 3 and "no answer from http://127.0.0.1:9/v1/chat/completions" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url, variable",
    [
        ("https://api.openai.com/v1/chat/completions", "OPENAI_API_KEY"),
        ("https://api.anthropic.com/v1/messages", "ANTHROPIC_API_KEY"),
        ("https://my-resource.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21", "AZURE_OPENAI_API_KEY"),
    ],
)
def test_no_key_for_a_providers_own_api_is_refused_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, variable: str
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    requests = write_jsonl(tmp_path / "r.jsonl", [{"model": "claude-x", "max_tokens": 5, **chat_request(1)}])
    for extra in ([], ["--show_limits"], [] if "anthropic" in url else ["--mode", "batch"]):  # (no Batch mode for Anthropic)
        code, err = run_main(["--requests_filepath", str(requests), "--request_url", url, *extra], capsys)
        assert code == EXIT_USAGE, extra
        assert f"set ${variable}" in err and "--api_key" in err and len(err.strip().splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.jsonl"]  # nothing created
    # A dry run sends nothing and needs no key; a key in a header counts; a local server may want none.
    assert run_main(["--requests_filepath", str(requests), "--request_url", url, "--dry_run"], capsys)[0] == 0
    with_header = build_parser().parse_args(["--requests_filepath", "r.jsonl", "--request_url", url, "--header", "Authorization: Bearer x"])
    from rate_limited_processor.cli import _check_key

    _check_key(settings_from_args(with_header))
    _check_key(settings_from_args(build_parser().parse_args(["--requests_filepath", "r.jsonl", "--request_url", "http://127.0.0.1:9/v1/chat/completions"])))


def test_a_batch_holds_by_default_the_most_its_api_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rate_limited_processor.providers.registry import batch_max_lines

    assert batch_max_lines("https://api.openai.com/v1/chat/completions") == 50_000
    assert batch_max_lines("https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21") == 50_000
    assert batch_max_lines("https://api.anthropic.com/v1/messages") == 100_000
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}\n')
    argv = ["--requests_filepath", str(requests), "--mode", "batch", "--dry_run", "--request_url", "https://api.anthropic.com/v1/messages"]
    code, err = run_main([*argv, "--batch_max_lines", "100000"], capsys)
    assert code == 0, err  # Anthropic's Message Batches take 100,000 requests, more than OpenAI's 50,000 lines
