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
        '{"name": "a", "api_key": "%s"' % KEY,  # cut short
        '{"name": "a", "api_key": %s}' % KEY,  # unquoted
        '{"name": "a", "%s": 1}' % KEY,  # the key as a field
        '{"name": "a", "api_key_env": "%s"}' % KEY,  # the key where its variable's name goes
        '{"name": "a", "api_key_env": "a%s"}' % AZURE_KEY,  # ... shaped like a variable's name
        '{"name": "a", "max_requests_per_minute": "%s"}' % KEY,  # in a limit
        '{"name": "a", "api_key": "Bearer %s"}' % KEY,
        '{"name": "a", "api_key": "%s", "api_key_env": "X"}' % KEY,
        '{"name": "a", "headers": {"Authorization": "Bearer %s\\n"}}' % KEY,
        '{"name": "a", "headers": {"x": ["%s"]}}' % KEY,
        '["%s"]' % KEY,
        '"%s"' % KEY,
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
