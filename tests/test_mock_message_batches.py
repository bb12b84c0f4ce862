"""The mock's Message Batches: as strict as Anthropic documents its API, and no more talkative."""

from __future__ import annotations

import json
from typing import Any

from rate_limited_processor.jobs.batch_api import HTTPCall
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from tests.helpers import MOCK_ORIGIN
from tests.virtual_time import run_virtual

URL = f"{MOCK_ORIGIN}/v1/messages/batches"
HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json", "x-api-key": "sk-ant-test-0123456789"}


def params(i: int) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": f"say {i}"}]}


def call(api: MockApi, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, wait: float = 0.0) -> tuple[int, Any]:
    async def main() -> tuple[int, Any]:
        import asyncio

        await asyncio.sleep(wait)
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = await MockTransport(api).call(HTTPCall(method, url, HEADERS if headers is None else headers, raw))
        text = answer.body.decode()
        try:
            return answer.status, json.loads(text)
        except json.JSONDecodeError:
            return answer.status, text

    return run_virtual(main())


def create(api: MockApi, count: int, prefix: str = "r") -> dict[str, Any]:
    status, batch = call(api, "POST", URL, {"requests": [{"custom_id": f"{prefix}-{i}", "params": params(i)} for i in range(count)]})
    assert status == 200, batch
    return batch


def test_a_batch_runs_then_ends_and_its_results_are_one_line_per_request_in_shuffled_order() -> None:
    api = MockApi(MockConfig(batch_processing_seconds=30.0, batch_failed_lines=0.1, batch_expired_lines=0.1, seed=2))
    batch = create(api, 50)
    assert batch["processing_status"] == "in_progress" and batch["request_counts"]["processing"] == 50 and batch["results_url"] is None
    assert set(batch) == {"id", "type", "processing_status", "request_counts", "ended_at", "created_at", "expires_at", "archived_at",
                          "cancel_initiated_at", "results_url"}
    status, ended = call(api, "GET", f"{URL}/{batch['id']}", wait=31.0)
    assert status == 200 and ended["processing_status"] == "ended"
    assert ended["results_url"] == f"{URL}/{batch['id']}/results"
    status, text = call(api, "GET", ended["results_url"])
    lines = [json.loads(line) for line in text.splitlines()]
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == sorted(f"r-{i}" for i in range(50)) and ids != [f"r-{i}" for i in range(50)], "shuffled"
    kinds = {line["result"]["type"] for line in lines}
    assert kinds == {"succeeded", "errored", "expired"}
    counts = ended["request_counts"]
    assert counts["processing"] == 0 and sum(counts.values()) == 50 and counts["errored"] == api.message_batches.outcomes["errored"]


def test_what_the_api_refuses_is_refused() -> None:
    api = MockApi(MockConfig(api_key="sk-ant-test-0123456789"))
    no_version = {name: value for name, value in HEADERS.items() if name != "anthropic-version"}
    assert call(api, "POST", URL, {"requests": [{"custom_id": "a", "params": params(0)}]}, headers=no_version)[0] == 400
    assert call(api, "POST", URL, {"requests": [{"custom_id": "a", "params": params(0)}]}, headers={**HEADERS, "x-api-key": "sk-wrong-000000"})[0] == 401
    bad_ids = ["", "a" * 65, "has space", "dot.ted"]
    for custom_id in bad_ids:
        assert call(api, "POST", URL, {"requests": [{"custom_id": custom_id, "params": params(0)}]})[0] == 400, custom_id
    assert call(api, "POST", URL, {"requests": [{"custom_id": "a", "params": params(0)}, {"custom_id": "a", "params": params(1)}]})[0] == 400
    assert call(api, "POST", URL, {"requests": []})[0] == 400
    too_many = {"requests": [{"custom_id": f"r{i}", "params": {}} for i in range(100_001)]}
    assert call(api, "POST", URL, too_many)[0] == 400
    assert call(api, "GET", f"{URL}/msgbatch_nope")[0] == 404
    assert api.message_batches.created == [] and sum(api.message_batches.received.values()) == 0


def test_the_list_is_newest_first_in_pages() -> None:
    api = MockApi(MockConfig())
    made = [create(api, 1, prefix=f"b{i}")["id"] for i in range(5)]
    status, page = call(api, "GET", f"{URL}?limit=2")
    assert status == 200 and [batch["id"] for batch in page["data"]] == made[::-1][:2] and page["has_more"]
    _, page2 = call(api, "GET", f"{URL}?limit=2&after_id={page['last_id']}")
    _, page3 = call(api, "GET", f"{URL}?limit=2&after_id={page2['last_id']}")
    assert [batch["id"] for batch in page2["data"] + page3["data"]] == made[::-1][2:] and not page3["has_more"]
    _, back = call(api, "GET", f"{URL}?limit=2&before_id={page2['first_id']}")
    assert [batch["id"] for batch in back["data"]] == made[::-1][:2]
    assert call(api, "GET", f"{URL}?limit=1001")[0] == 400


def test_a_batch_that_never_ends_ends_when_cancelled_with_every_request_canceled() -> None:
    api = MockApi(MockConfig(batch_processing_seconds=1.0, batch_never_ends=True))
    batch = create(api, 3)
    assert call(api, "GET", f"{URL}/{batch['id']}", wait=3600.0)[1]["processing_status"] == "in_progress"
    status, canceling = call(api, "POST", f"{URL}/{batch['id']}/cancel")
    assert status == 200 and canceling["processing_status"] == "canceling" and canceling["cancel_initiated_at"]
    ended = call(api, "GET", f"{URL}/{batch['id']}", wait=2.0)[1]
    assert ended["processing_status"] == "ended" and ended["request_counts"]["canceled"] == 3
    _, text = call(api, "GET", ended["results_url"])
    assert {json.loads(line)["result"]["type"] for line in text.splitlines()} == {"canceled"}
