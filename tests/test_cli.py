"""The command line's contract: cookbook flags, --help, and usage errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rate_limited_processor.cli import EXIT_USAGE, build_parser, main, settings_from_args

COOKBOOK_FLAGS = [
    "--requests_filepath", "--save_filepath", "--request_url", "--api_key", "--max_requests_per_minute",
    "--max_tokens_per_minute", "--token_encoding_name", "--max_attempts", "--logging_level",
]


def test_help_documents_every_flag_with_its_default() -> None:
    result = subprocess.run([sys.executable, "-m", "rate_limited_processor", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())  # argparse wraps lines to the terminal width
    for flag in [*COOKBOOK_FLAGS, "--request_timeout", "--max_in_flight"]:
        assert flag in text
    assert text.count("(default: auto)") == 3 and "(default: 600.0)" in text and "(default: 1.0)" in text
    assert "Exit codes" in text


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
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"input": "x"}\n')
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
