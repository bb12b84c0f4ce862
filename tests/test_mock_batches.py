"""The mock's Files and Batches endpoints: as strict as the real API about shapes, and a batch's life on the mock's clock.

Most tests talk to `MockApi` directly, in virtual time; one goes over a real socket with the client batch mode uses.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest

from rate_limited_processor.config.credentials import Scrubber
from rate_limited_processor.jobs.batch_api import AiohttpBatchHTTP, BatchAPI, BatchAPIError, multipart_form
from rate_limited_processor.mock_server import MockApi, MockConfig, MockRequest, MockServer
from rate_limited_processor.mock_server.reply import Reply
from rate_limited_processor.mock_server.responses import response_matches
from tests.helpers import chat_request
from tests.virtual_time import run_virtual


def batch_line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions", method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def body(i: int, **changes: Any) -> dict[str, Any]:
    request = {name: value for name, value in chat_request(i).items() if name != "metadata"}
    return {**request, **changes}


async def call(api: MockApi, method: str, path: str, payload: Any = None, *, raw: bytes | None = None, content_type: str = "", key: str | None = None) -> Any:
    headers = {"content-type": content_type} if content_type else {}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    path, _, query = path.partition("?")
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
    params = dict(pair.split("=") for pair in query.split("&")) if query else {}
    reply = await api.answer(MockRequest(path, data, headers, params, method))
    assert isinstance(reply, Reply)
    return reply.status, reply.json() if reply.content_type == "application/json" else reply.body


async def upload(api: MockApi, lines: list[str], *, purpose: str = "batch", key: str | None = None) -> Any:
    form, content_type = multipart_form({"purpose": purpose}, "file", "input.jsonl", ("\n".join(lines) + "\n").encode())
    return await call(api, "POST", "/v1/files", raw=form, content_type=content_type, key=key)


async def create(api: MockApi, file_id: str, **changes: Any) -> Any:
    return await call(api, "POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **changes})


def test_a_batch_validates_runs_and_completes_on_the_mocks_clock_with_each_line_answered_as_online() -> None:
    api = MockApi(MockConfig(batch_validation_seconds=2.0, batch_processing_seconds=30.0))

    async def main() -> None:
        bodies = [body(i) for i in range(5)]
        status, file = await upload(api, [batch_line(f"r{i}", request) for i, request in enumerate(bodies)])
        assert status == 200 and file["purpose"] == "batch" and file["object"] == "file"
        status, batch = await create(api, file["id"], metadata={"part": "one"})
        assert (status, batch["status"], batch["metadata"], batch["completion_window"]) == (200, "validating", {"part": "one"}, "24h")
        await asyncio.sleep(2.0)
        assert (await call(api, "GET", f"/v1/batches/{batch['id']}"))[1]["status"] == "in_progress"
        await asyncio.sleep(28.0)
        _, batch = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert batch["status"] == "completed" and batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
        assert batch["error_file_id"] is None
        _, content = await call(api, "GET", f"/v1/files/{batch['output_file_id']}/content")
        rows = {row["custom_id"]: row for row in map(json.loads, content.splitlines())}
        assert all(response_matches("chat/completions", bodies[i], rows[f"r{i}"]["response"]["body"]) for i in range(5))
        assert all(row["id"].startswith("batch_req_") and row["error"] is None for row in rows.values())

    run_virtual(main())


@pytest.mark.parametrize(
    "lines, code, line",
    [
        ([batch_line("a", body(1)), "not json"], "invalid_json_line", 2),
        ([batch_line("a", body(1)), batch_line("a", body(2))], "duplicate_custom_id", 2),
        ([batch_line("a", body(1)), batch_line("b", body(2, model="gpt-4o"))], "mismatched_model", 2),
        ([batch_line("a", body(1), url="/v1/embeddings")], "mismatched_endpoint", 1),
        ([batch_line("a", body(1), method="GET")], "invalid_method", 1),
        ([json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"})], "invalid_request", 1),
    ],
)
def test_a_file_the_api_would_refuse_fails_its_batch_after_validation_naming_the_line(lines: list[str], code: str, line: int) -> None:
    api = MockApi(MockConfig(batch_validation_seconds=1.0, batch_processing_seconds=10.0))

    async def main() -> None:
        _, file = await upload(api, lines)
        _, batch = await create(api, file["id"])
        await asyncio.sleep(1.0)
        _, batch = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert batch["status"] == "failed"
        assert (batch["errors"]["data"][0]["code"], batch["errors"]["data"][0]["line"]) == (code, line)

    run_virtual(main())


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"completion_window": "1h"}, "completion_window"),
        ({"endpoint": "/v1/images"}, "endpoint"),
        ({"input_file_id": "file-nope"}, "input_file_id"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"priority": "high"}, None),
    ],
)
def test_a_batch_request_of_the_wrong_shape_is_a_400_naming_what_is_wrong(changes: dict[str, Any], param: str | None) -> None:
    api = MockApi(MockConfig())

    async def main() -> None:
        _, file = await upload(api, [batch_line("a", body(1))])
        status, answer = await create(api, file["id"], **changes)
        assert status == 400 and answer["error"]["param"] == param
        assert api.batches.created == []

    run_virtual(main())


def test_an_upload_must_be_a_multipart_form_with_purpose_batch_and_a_file_and_a_key_where_one_is_required() -> None:
    api = MockApi(MockConfig(api_key="sk-mock-key-for-batches"))

    async def main() -> None:
        assert (await upload(api, [batch_line("a", body(1))]))[0] == 401
        key = "sk-mock-key-for-batches"
        status, answer = await upload(api, [batch_line("a", body(1))], purpose="fine-tune", key=key)
        assert status == 400 and answer["error"]["param"] == "purpose"
        status, answer = await call(api, "POST", "/v1/files", {"purpose": "batch"}, content_type="application/json", key=key)
        assert status == 400
        form, content_type = multipart_form({"purpose": "batch"}, "other", "x.jsonl", b"{}\n")
        status, answer = await call(api, "POST", "/v1/files", raw=form, content_type=content_type, key=key)
        assert status == 400 and answer["error"]["param"] == "file"
        assert (await upload(api, [batch_line("a", body(1))], key=key))[0] == 200
        assert (await call(api, "GET", "/v1/batches/batch_nope", key=key))[0] == 404
        assert (await call(api, "GET", "/v1/files/file-nope/content", key=key))[0] == 404
        assert (await call(api, "GET", "/v1/chat/completions", key=key))[0] == 404, "the online endpoints take POST only"

    run_virtual(main())


def test_lists_are_newest_first_and_page_with_after() -> None:
    api = MockApi(MockConfig())

    async def main() -> None:
        _, file = await upload(api, [batch_line("a", body(1))])
        made = [(await create(api, file["id"]))[1]["id"] for _ in range(5)]
        _, page = await call(api, "GET", "/v1/batches?limit=2")
        assert [batch["id"] for batch in page["data"]] == made[::-1][:2] and page["has_more"]
        _, rest = await call(api, "GET", f"/v1/batches?limit=10&after={page['last_id']}")
        assert [batch["id"] for batch in rest["data"]] == made[::-1][2:] and not rest["has_more"]
        assert (await call(api, "GET", "/v1/batches?limit=101"))[0] == 400
        _, files = await call(api, "GET", "/v1/files?purpose=batch")
        assert [item["id"] for item in files["data"]] == [file["id"]]

    run_virtual(main())


def test_cancel_ends_a_running_batch_with_its_lines_cancelled() -> None:
    api = MockApi(MockConfig(batch_validation_seconds=1.0, batch_processing_seconds=60.0))

    async def main() -> None:
        _, file = await upload(api, [batch_line(f"r{i}", body(i)) for i in range(3)])
        _, batch = await create(api, file["id"])
        status, cancelling = await call(api, "POST", f"/v1/batches/{batch['id']}/cancel")
        assert (status, cancelling["status"]) == (200, "cancelling")
        _, batch = await call(api, "GET", f"/v1/batches/{batch['id']}")
        _, errors = await call(api, "GET", f"/v1/files/{batch['error_file_id']}/content")
        assert batch["status"] == "cancelled" and {json.loads(row)["error"]["code"] for row in errors.splitlines()} == {"batch_cancelled"}
        assert (await call(api, "POST", f"/v1/batches/{batch['id']}/cancel"))[0] == 409

    run_virtual(main())


def test_a_stalled_batch_never_ends_and_a_cancel_keeps_the_lines_done_before_and_while_it_was_cancelling() -> None:
    config = MockConfig(batch_validation_seconds=1.0, batch_processing_seconds=11.0, batch_stall_at=0.5, batch_cancelling_seconds=2.0)
    api = MockApi(config)

    async def main() -> None:
        _, file = await upload(api, [batch_line(f"r{i}", body(i)) for i in range(10)])
        _, batch = await create(api, file["id"])
        await asyncio.sleep(3.0)  # 2 s of the 10 s pace: 2 lines done
        _, seen = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert (seen["status"], seen["request_counts"]["completed"]) == ("in_progress", 2)
        await asyncio.sleep(3_600.0)  # stalled at half, it never ends on its own
        _, seen = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert (seen["status"], seen["request_counts"]["completed"], seen["output_file_id"]) == ("in_progress", 5, None)
        status, cancelling = await call(api, "POST", f"/v1/batches/{batch['id']}/cancel")
        assert (status, cancelling["status"]) == (200, "cancelling")
        assert (await call(api, "POST", f"/v1/batches/{batch['id']}/cancel"))[0] == 409
        await asyncio.sleep(2.0)
        _, ended = await call(api, "GET", f"/v1/batches/{batch['id']}")
        _, output = await call(api, "GET", f"/v1/files/{ended['output_file_id']}/content")
        _, errors = await call(api, "GET", f"/v1/files/{ended['error_file_id']}/content")
        assert ended["status"] == "cancelled" and ended["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
        assert [json.loads(row)["custom_id"] for row in output.splitlines()] == [f"r{i}" for i in range(5)]
        assert {json.loads(row)["error"]["code"] for row in errors.splitlines()} == {"batch_cancelled"}
        assert api.batches.answered[batch["id"]] == [f"r{i}" for i in range(5)] and api.batches.cancels == [batch["id"]]

    run_virtual(main())


def test_a_batch_cancelled_while_running_at_its_pace_keeps_the_lines_done_during_cancelling() -> None:
    api = MockApi(MockConfig(batch_validation_seconds=0.0, batch_processing_seconds=10.0, batch_cancelling_seconds=3.0))

    async def main() -> None:
        _, file = await upload(api, [batch_line(f"r{i}", body(i)) for i in range(10)])
        _, batch = await create(api, file["id"])
        await asyncio.sleep(4.0)
        await call(api, "POST", f"/v1/batches/{batch['id']}/cancel")
        await asyncio.sleep(1.0)
        _, seen = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert (seen["status"], seen["request_counts"]["completed"]) == ("cancelling", 5)
        await asyncio.sleep(2.0)
        _, seen = await call(api, "GET", f"/v1/batches/{batch['id']}")
        assert (seen["status"], seen["request_counts"]["completed"]) == ("cancelled", 7)

    run_virtual(main())


async def test_over_a_real_socket_the_client_uploads_creates_finds_and_downloads_and_the_stats_count_batches() -> None:
    async with MockServer(MockConfig(batch_validation_seconds=0.0, batch_processing_seconds=0.0)) as server:
        http = AiohttpBatchHTTP()
        api = BatchAPI(server.base_url, {}, http=http, scrub=Scrubber([]))
        try:
            file = await api.upload("part-7.jsonl", (batch_line("r1", body(1)) + "\n").encode())
            batch = await api.create(file["id"], "/v1/chat/completions", {"rate_limited_processor_part": "part-7"})
            assert (await api.find_file("part-7.jsonl")) == file
            found = await api.find_batch("rate_limited_processor_part", "part-7")
            assert found is not None and found["id"] == batch["id"]
            batch = await api.get(batch["id"])
            sink = io.BytesIO()
            await api.download(batch["output_file_id"], sink)
            assert response_matches("chat/completions", body(1), json.loads(sink.getvalue())["response"]["body"])
            with pytest.raises(BatchAPIError, match="HTTP 404"):
                await api.get("batch_nope")
            async with aiohttp.ClientSession() as session, session.get(server.stats_url) as response:
                stats = await response.json()
        finally:
            await http.aclose()
    assert stats["batches"] == {"input_files": 1, "created": 1, "cancels": 0, "lines_answered": 1, "by_status": {"completed": 1}}
