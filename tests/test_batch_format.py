"""The OpenAI Batch file format, both ways: Batch input lines (mixed endpoints) and Batch output lines."""

from __future__ import annotations

import doctest
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor.base.models import APIRequest, RejectedLine
from rate_limited_processor.files.request_io import parse_request_line
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.providers import endpoints
from rate_limited_processor.providers.endpoints import Endpoint, UnsupportedEndpoint, endpoint_from_url, resolve_url
from tests.helpers import chat_request, embedding_request, read_rows, run_cli, write_jsonl


def batch_line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def mixed_batch(n: int) -> list[dict[str, Any]]:
    lines = []
    for i in range(n):
        if i % 2:
            body = {k: v for k, v in chat_request(i).items() if k != "metadata"}
            lines.append(batch_line(f"chat-{i}", "/v1/chat/completions", body))
        else:
            body = {k: v for k, v in embedding_request(i).items() if k != "metadata"}
            lines.append(batch_line(f"emb-{i}", "/v1/embeddings", body))
    return lines


def test_endpoint_doctests() -> None:
    assert doctest.testmod(endpoints).failed == 0


@pytest.mark.parametrize(
    "url, endpoint",
    [
        ("https://api.openai.com/v1/chat/completions", Endpoint.CHAT_COMPLETIONS),
        ("https://api.openai.com/v1/completions", Endpoint.COMPLETIONS),
        ("http://localhost:8000/v1/embeddings/", Endpoint.EMBEDDINGS),
        ("https://x.openai.azure.com/openai/deployments/d/responses?api-version=2025-03-01-preview", Endpoint.RESPONSES),
        ("/v1/chat/completions", Endpoint.CHAT_COMPLETIONS),
    ],
)
def test_endpoints_are_recognised_by_the_end_of_the_path(url: str, endpoint: Endpoint) -> None:
    assert endpoint_from_url(url) is endpoint


def test_an_endpoint_that_cannot_be_estimated_is_refused() -> None:
    with pytest.raises(UnsupportedEndpoint, match="/images/generations"):
        endpoint_from_url("https://api.openai.com/v1/images/generations")


@pytest.mark.parametrize(
    "request_url, line_url, expected",
    [
        ("https://api.openai.com/v1/chat/completions", None, "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1/chat/completions", "/v1/embeddings", "https://api.openai.com/v1/embeddings"),
        ("https://api.openai.com/v1", "/v1/responses", "https://api.openai.com/v1/responses"),
        ("http://gateway/proxy/v1/embeddings", "/v1/chat/completions", "http://gateway/proxy/v1/chat/completions"),
        (
            "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21",
            "/chat/completions",
            "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21",
        ),
    ],
)
def test_a_batch_lines_url_replaces_the_endpoint_part_of_the_request_url(request_url: str, line_url: str | None, expected: str) -> None:
    assert resolve_url(request_url, line_url) == expected


def test_batch_lines_are_recognised_and_their_custom_id_kept_as_metadata() -> None:
    item = parse_request_line(json.dumps(batch_line("r-1", "/v1/embeddings", {"model": "m", "input": "x"})), 4)
    assert item == APIRequest(
        index=4, body={"model": "m", "input": "x"}, metadata={"custom_id": "r-1"}, label="line 4 (r-1)", url="/v1/embeddings", custom_id="r-1",
    )


@pytest.mark.parametrize(
    "line, problem",
    [
        ({"custom_id": "", "url": "/v1/embeddings", "body": {}}, "custom_id must be a non-empty string"),
        ({"custom_id": "a", "url": 5, "body": {}}, "url must be a string"),
        ({"custom_id": "a", "url": "/v1/embeddings", "body": []}, "body must be a JSON object"),
        ({"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}, "method 'GET' is not supported"),
    ],
)
def test_malformed_batch_lines_are_rejected_with_the_reason(line: dict[str, Any], problem: str) -> None:
    item = parse_request_line(json.dumps(line), 9)
    assert isinstance(item, RejectedLine) and item.reason.startswith("line 9: Batch line, but") and problem in item.reason


async def test_a_mixed_batch_file_is_processed_and_written_as_batch_output(tmp_path: Path) -> None:
    lines = mixed_batch(60)
    lines.append(batch_line("chat-1", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "dup"}]}))
    input_path = write_jsonl(tmp_path / "batch.jsonl", lines)
    output_path = tmp_path / "out.jsonl"
    async with MockServer() as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(input_path), "--save_filepath", str(output_path), "--request_url", server.base_url,
        )
        served = Counter(entry.endpoint for entry in server.record)
    assert code == 1, stderr  # the duplicate is a recorded failure
    assert served == {Endpoint.CHAT_COMPLETIONS: 30, Endpoint.EMBEDDINGS: 30}
    rows = read_rows(output_path)
    by_id = {line["custom_id"]: line for line in lines[:60]}
    successes = [row for row in rows if row["response"] and row["response"]["status_code"] == 200]
    assert Counter(row["custom_id"] for row in successes) == Counter(by_id.keys())
    for row in successes:
        line = by_id[row["custom_id"]]
        assert set(row) == {"id", "custom_id", "response", "error"} and row["error"] is None
        assert response_matches(line["url"], line["body"], row["response"]["body"])
    assert len({row["id"] for row in rows}) == len(rows) == 61
    duplicate = [row for row in rows if row["error"]]
    assert len(duplicate) == 1
    assert duplicate[0]["error"] == {"code": "invalid_request", "message": "line 61: duplicate custom_id 'chat-1' (first on line 2)"}
    assert "line 61: duplicate custom_id" in stderr


async def test_batch_output_resumes_and_retries_failures_by_custom_id(tmp_path: Path) -> None:
    lines = mixed_batch(80)
    input_path = write_jsonl(tmp_path / "batch.jsonl", lines)
    output_path = tmp_path / "out.jsonl"
    async with MockServer(MockConfig(faults={"500": 0.25}, seed=9)) as flaky:
        paths = ("--requests_filepath", str(input_path), "--save_filepath", str(output_path))
        code, _, _ = await run_cli(*paths, "--request_url", flaky.base_url, "--max_attempts", "1")
    assert code == 1
    failed = [row for row in read_rows(output_path) if row["response"]["status_code"] != 200]
    assert failed and all(row["response"]["body"]["error"]["type"] == "server_error" for row in failed)
    async with MockServer() as healthy:
        code, _, stderr = await run_cli(*paths, "--request_url", healthy.base_url)
        # A plain rerun sends nothing, but tells the truth: failures remain, and --retry_failed sends them.
        assert code == 1 and len(healthy.record) == 0 and "--retry_failed" in stderr
        code, _, _ = await run_cli(*paths, "--request_url", healthy.base_url, "--retry_failed")
        assert code == 0 and len(healthy.record) == len(failed)
    rows = read_rows(output_path)
    assert Counter(row["custom_id"] for row in rows) == Counter(line["custom_id"] for line in lines)
    assert all(row["response"]["status_code"] == 200 for row in rows)


async def test_batch_input_can_be_written_in_the_cookbook_shape_and_cookbook_input_as_batch(tmp_path: Path) -> None:
    batch_input = write_jsonl(tmp_path / "batch.jsonl", mixed_batch(4))
    cookbook_input = write_jsonl(tmp_path / "cookbook.jsonl", [embedding_request(i) for i in range(3)])
    async with MockServer() as server:
        paths = ("--requests_filepath", str(batch_input), "--save_filepath", str(tmp_path / "a.jsonl"))
        code, _, _ = await run_cli(*paths, "--request_url", server.base_url, "--output_format", "cookbook")
        assert code == 0
        paths = ("--requests_filepath", str(cookbook_input), "--save_filepath", str(tmp_path / "b.jsonl"))
        code, _, _ = await run_cli(*paths, "--request_url", server.url("embeddings"), "--output_format", "batch")
        assert code == 0
    cookbook_rows = read_rows(tmp_path / "a.jsonl")
    assert sorted(row[2]["custom_id"] for row in cookbook_rows) == ["chat-1", "chat-3", "emb-0", "emb-2"]
    batch_rows = read_rows(tmp_path / "b.jsonl")
    assert all(row["custom_id"] is None and row["response"]["status_code"] == 200 for row in batch_rows)
    assert len({row["id"] for row in batch_rows}) == 3


async def test_metadata_custom_id_identifies_cookbook_lines_and_must_be_unique(tmp_path: Path) -> None:
    requests = [{**embedding_request(i), "metadata": {"custom_id": f"doc-{i % 3}"}} for i in range(4)]  # doc-0 twice
    input_path = write_jsonl(tmp_path / "in.jsonl", requests)
    async with MockServer() as server:
        code, _, stderr = await run_cli("--requests_filepath", str(input_path), "--request_url", server.url("embeddings"))
        assert len(server.record) == 3
    assert code == 1 and "line 4: duplicate custom_id 'doc-0' (first on line 1)" in stderr


async def test_a_batch_line_cannot_send_the_key_to_another_server_or_break_the_run(tmp_path: Path) -> None:
    body = {"model": "m", "input": "x"}
    lines = [
        batch_line("elsewhere", "http://127.0.0.2:9/v1/embeddings", body),  # would carry the key away
        batch_line("malformed", "http://[oops/v1/embeddings", body),
        batch_line("fine", "/v1/embeddings", body),
    ]
    input_path = write_jsonl(tmp_path / "batch.jsonl", lines)
    async with MockServer() as server:
        code, _, stderr = await run_cli("--requests_filepath", str(input_path), "--save_filepath", str(tmp_path / "out.jsonl"),
                                        "--request_url", server.base_url, "--api_key", "sk-must-stay-home")
        assert len(server.record) == 1
    assert code == 1, stderr
    rows = {row["custom_id"]: row for row in read_rows(tmp_path / "out.jsonl")}
    assert "points at another server" in rows["elsewhere"]["error"]["message"]
    assert rows["malformed"]["error"]["code"] == "invalid_request"
    assert rows["fine"]["response"]["status_code"] == 200


def test_a_rejected_batch_line_reusing_an_id_is_a_duplicate_too(tmp_path: Path) -> None:
    from rate_limited_processor.files.request_io import read_requests

    path = write_jsonl(tmp_path / "batch.jsonl", [
        batch_line("a", "/v1/embeddings", {"model": "m", "input": "x"}),
        {"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}},
    ])
    first, second = list(read_requests(path))
    assert isinstance(first, APIRequest) and first.custom_id == "a"
    assert isinstance(second, RejectedLine) and second.custom_id is None and "duplicate custom_id 'a'" in second.reason
