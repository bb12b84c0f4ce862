"""A malformed `--accounts` file never shows a key: whatever field it was put in, or whatever shape the line has."""

from __future__ import annotations

from pathlib import Path

import pytest

from rate_limited_processor.cli import main
from tests.helpers import write_jsonl

KEY = "sk-proj-AttackerSeesThis0123456789abcdefXYZ"
AZURE_KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "line",
    [
        f'{{"name": "a", "api_key": "{KEY}"',  # cut short
        f'{{"name": "a", "api_key": {KEY}}}',  # unquoted
        f'{{"name": "a", "{KEY}": 1}}',  # the key as a field
        f'{{"name": "a", "api_key_env": "{KEY}"}}',  # the key where its variable's name goes
        f'{{"name": "a", "api_key_env": "a{AZURE_KEY}"}}',  # ... shaped like a variable's name
        f'{{"name": "a", "max_requests_per_minute": "{KEY}"}}',  # in a limit
        f'{{"name": "a", "api_key": "Bearer {KEY}"}}',
        f'{{"name": "a", "api_key": "{KEY}", "api_key_env": "X"}}',
        f'{{"name": "a", "headers": {{"Authorization": "Bearer {KEY}\\n"}}}}',
        f'{{"name": "a", "headers": {{"x": ["{KEY}"]}}}}',
        f'["{KEY}"]',
        f'"{KEY}"',
        KEY,
    ],
)
def test_a_malformed_accounts_line_is_refused_without_showing_the_key(tmp_path: Path, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}])
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_text(line + "\n")
    code = main(["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--accounts", str(accounts)])
    err = capsys.readouterr().err
    assert code == 2 and "--accounts" in err
    for secret in (KEY, AZURE_KEY):
        for start in range(0, len(secret) - 12, 4):
            assert secret[start : start + 12] not in err, err
    assert not (tmp_path / "requests_results.jsonl").exists()


def test_a_typo_in_a_field_name_is_still_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}])
    accounts = write_jsonl(tmp_path / "accounts.jsonl", [{"name": "a", "api_key": KEY, "max_request_per_minute": 5}])
    main(["--requests_filepath", str(requests), "--request_url", "http://127.0.0.1:9/v1/chat/completions", "--accounts", str(accounts)])
    err = capsys.readouterr().err
    assert "'max_request_per_minute'; did you mean 'max_requests_per_minute'?" in err and KEY not in err
