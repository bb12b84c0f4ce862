"""`--mode auto --deadline` with the other batch APIs, in virtual time: Anthropic's Message Batches (a Messages URL)
and Azure Global Batch (a deployment URL) take both judges of issue 28 as OpenAI's Batch API does (test_auto_mode.py):
batches that end in time take every line; batches that stall are cancelled in time, what they finished is kept,
and the rest goes online before the deadline, no line both ways. Gemini (no batch API) is refused for auto mode."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.files.resume import sidecar_path
from rate_limited_processor.jobs.auto_job import run_auto_job
from rate_limited_processor.jobs.batch_rows import BatchOptions
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.record import request_key
from tests.helpers import MOCK_ORIGIN, chat_request, read_rows, write_jsonl
from tests.virtual_time import run_virtual

LINES = 400
MESSAGES_URL = f"{MOCK_ORIGIN}/v1/messages"
AZURE_URL = f"{MOCK_ORIGIN}/openai/deployments/my-batch/chat/completions?api-version=2024-10-21"
AZURE_KEY = "azure-key-0123456789abcdef"
#: Judge 1: batches that end 3 s after creation. Judge 2: batches that stall halfway through 10 s and never end.
ENDING: dict[str, Any] = {"batch_validation_seconds": 0.5, "batch_processing_seconds": 3.0}
STALLING: dict[str, Any] = {"batch_validation_seconds": 0.5, "batch_processing_seconds": 10.0, "batch_stall_at": 0.5}


def message_line(i: int) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": f"say {i}"}], "metadata": {"id": i}}


def azure_line(i: int) -> dict[str, Any]:
    """A chat line as Azure users write them: the deployment in the URL, no model in the body."""
    return {name: value for name, value in chat_request(i).items() if name != "model"}


def run_auto(
    api: MockApi, url: str, key: str | None, input_path: Path, output_path: Path, *, rpm: float, http: Any = None, **options: Any,
) -> RunStats:
    async def main() -> RunStats:
        transport = MockTransport(api)
        return await run_auto_job(
            Settings(request_url=url, api_key=key, max_requests_per_minute=rpm), input_path, output_path, deadline_seconds=60.0,
            options=BatchOptions(poll_interval=1.0, **options), http=http or transport, transport=transport, show_progress=False,
        )

    return run_virtual(main())


def batched_lines(api: MockApi) -> Counter[int]:
    """From the mock's records: each line (0-based) a batch answered, by its custom_id ("line-<n>-..." for the Batch
    API; "rlp-<token>-part-<p>-<n>-<identity>" for Message Batches, whose answers are the succeeded results)."""
    openai = Counter(int(custom_id.split("-")[1]) - 1 for ids in api.batches.answered.values() for custom_id in ids)
    messages = Counter(
        int(result["custom_id"].split("-")[-2]) - 1
        for batch in api.message_batches._batches.values() for result in batch.results if result["result"]["type"] == "succeeded"
    )
    return openai + messages


def online_lines(api: MockApi, requests: list[dict[str, Any]]) -> Counter[int]:
    by_key = {request_key(request): i for i, request in enumerate(requests)}
    return Counter(by_key[key] for key, count in api.record.served_ok_keys().items() for _ in range(count))


def cancels(api: MockApi) -> int:
    return len(api.batches.cancels) + sum(1 for batch in api.message_batches._batches.values() if batch.cancel_at is not None)


PROVIDERS = [
    pytest.param(MESSAGES_URL, None, message_line, id="anthropic-message-batches"),
    pytest.param(AZURE_URL, AZURE_KEY, azure_line, id="azure-global-batch"),
]


@pytest.mark.parametrize("url, key, line", PROVIDERS)
def test_batches_that_end_in_3_s_take_every_line_before_a_60_s_deadline(tmp_path: Path, url: str, key: str | None, line: Any) -> None:
    requests = [line(i) for i in range(LINES)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=600, api_key=key, **ENDING))

    stats = run_auto(api, url, key, input_path, output_path, rpm=600)

    assert Counter(row[2]["id"] for row in read_rows(output_path)) == Counter(range(LINES))
    assert batched_lines(api) == Counter(range(LINES)) and not online_lines(api, requests) and not cancels(api)
    assert stats.stop_reason is None and stats.deadline_plan is not None and stats.deadline_plan.batched == LINES
    assert not sidecar_path(output_path, "deadline").exists() and not sidecar_path(output_path, "batches").exists()


@pytest.mark.parametrize("url, key, line", PROVIDERS)
def test_batches_that_stall_are_cancelled_in_time_keeping_what_they_finished(tmp_path: Path, url: str, key: str | None, line: Any) -> None:
    requests = [line(i) for i in range(LINES)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=1_200, api_key=key, **STALLING))

    stats = run_auto(api, url, key, input_path, output_path, rpm=1_200, max_lines=100)

    assert Counter(row[2]["id"] for row in read_rows(output_path)) == Counter(range(LINES)), "every line once"
    batched, online = batched_lines(api), online_lines(api, requests)
    assert not set(batched) & set(online), "no line both in a batch's results and sent online"
    assert batched + online == Counter(range(LINES))
    assert sum(batched.values()) == LINES // 2 and cancels(api) == 4
    assert stats.finished_at is not None and stats.finished_at - stats.started_at < 60.0, "the last row before the deadline"
    assert stats.deadline_plan is not None and (stats.deadline_plan.batched, stats.deadline_plan.online, stats.deadline_plan.cancels) == (200, 200, 4)


@pytest.mark.parametrize("method, path_end, nth", [("POST", "/batches", 2), ("POST", "/cancel", 1), ("POST", "/cancel", 3)])
def test_a_message_batches_run_killed_at_a_create_or_a_cancel_is_continued_by_a_rerun_that_pays_for_no_line_twice(
    tmp_path: Path, method: str, path_end: str, nth: int,
) -> None:
    from tests.test_auto_mode import DiesAt, Killed

    requests = [message_line(i) for i in range(LINES)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=1_200, **STALLING))

    with pytest.raises((Killed, BaseExceptionGroup)):
        run_auto(api, MESSAGES_URL, None, input_path, output_path, rpm=1_200, max_lines=100, http=DiesAt(api, method, path_end, nth))
    stats = run_auto(api, MESSAGES_URL, None, input_path, output_path, rpm=1_200, max_lines=100)

    assert Counter(row[2]["id"] for row in read_rows(output_path)) == Counter(range(LINES))
    batched, online = batched_lines(api), online_lines(api, requests)
    assert max((batched + online).values()) == 1, "no line was answered twice, by a batch or online"
    assert batched + online == Counter(range(LINES)) and len(api.message_batches.created) == 4, "no part was created twice"
    assert stats.stop_reason is None and not sidecar_path(output_path, "deadline").exists()


def test_a_rerun_at_the_rescue_waits_for_a_message_batch_a_killed_run_created_unrecorded_and_sends_none_of_its_lines_twice(tmp_path: Path) -> None:
    """A Message Batch carries no token to be found by: the part's batch, found by its size and time, may be another's,
    so the rescue does not cancel it; it is waited for, its results read, and only its lines without a result go online."""
    import json
    import time

    from tests.test_auto_mode import DiesAt, Killed

    requests = [message_line(i) for i in range(LINES)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=1_200, batch_validation_seconds=0.5, batch_processing_seconds=10.0))

    with pytest.raises((Killed, BaseExceptionGroup)):  # the 4th part's batch is created, and the run dies before it hears its id
        run_auto(api, MESSAGES_URL, None, input_path, output_path, rpm=1_200, max_lines=100, http=DiesAt(api, "POST", "/batches", 4))
    deadline_file = sidecar_path(output_path, "deadline")
    deadline_file.write_text(json.dumps({"deadline_at": time.time() + 25.0}))  # the rerun comes late: the rescue is due at once
    stats = run_auto(api, MESSAGES_URL, None, input_path, output_path, rpm=1_200, max_lines=100)

    batched, online = batched_lines(api), online_lines(api, requests)
    assert len(api.message_batches.created) == 4, "the part was not created again"
    unrecorded = api.message_batches._batches[api.message_batches.created[3]]
    assert unrecorded.cancel_at is None, "a batch found by a guess is not cancelled"
    assert cancels(api) == 3 and set(range(300, 400)) <= set(batched), "its lines came from its results, none online"
    assert max((batched + online).values()) == 1 and batched + online == Counter(range(LINES))
    assert stats.stop_reason is None


def test_a_rescue_on_an_account_whose_output_token_limit_binds_starts_in_time_for_it(tmp_path: Path) -> None:
    # Anthropic counts output tokens apart (OTPM), charging each request its max_tokens as it is sent. Here the 200
    # lines the batches leave, answers of 200 output tokens each, take 20 s at 120,000 OTPM, but 2 s at 6,000 RPM: a
    # plan that counted requests and input tokens alone started the rescue too late for the output-token limit.
    requests = [{**message_line(i), "max_tokens": 200} for i in range(LINES)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=6_000, output_tokens_per_minute=120_000, output_burst_seconds=1.0, output_tokens=200, **STALLING))

    async def main() -> RunStats:
        transport = MockTransport(api)
        settings = Settings(request_url=MESSAGES_URL, api_key=None, max_requests_per_minute=6_000, max_output_tokens_per_minute=120_000)
        return await run_auto_job(
            settings, input_path, output_path, deadline_seconds=60.0,
            options=BatchOptions(poll_interval=1.0, max_lines=100), http=transport, transport=transport, show_progress=False,
        )

    stats = run_virtual(main())

    assert Counter(row[2]["id"] for row in read_rows(output_path)) == Counter(range(LINES)), "every line once"
    batched, online = batched_lines(api), online_lines(api, requests)
    assert not set(batched) & set(online) and batched + online == Counter(range(LINES))
    assert stats.finished_at is not None
    last_row = stats.finished_at - stats.started_at
    print(f"\n  OTPM-bound rescue: {sum(batched.values())} lines by batches, {sum(online.values())} online, last row at {last_row:.1f} s of 60")
    assert last_row < 60.0, f"the last row at {last_row:.1f} s, after the deadline"


def test_batch_input_lines_against_the_api_root_are_planned_by_their_own_endpoint(tmp_path: Path) -> None:
    # Lines in the Batch API's own shape carry their url: the --request_url may be the API root, which names no
    # endpoint. The plan counts each part's tokens as its lines' endpoint does (it raised UnsupportedEndpoint).
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_request(i)} for i in range(50)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(requests_per_minute=600, **ENDING))

    stats = run_auto(api, f"{MOCK_ORIGIN}/v1", None, input_path, output_path, rpm=600)

    assert stats.stop_reason is None and stats.deadline_plan is not None and stats.deadline_plan.batched == 50
    # The output keeps the input's shape: the Batch API's output lines, one per custom_id.
    assert Counter(row["custom_id"] for row in read_rows(output_path)) == Counter(f"c{i}" for i in range(50))


def test_with_limits_given_but_no_output_limit_the_output_limit_the_api_states_is_learned() -> None:
    # Anthropic states its output-token limit in its headers; a user who gives the request limit (as the README
    # asks for auto mode) still gets a plan that counts it, each limit the lower of given and stated.
    from rate_limited_processor.jobs.probe import auto_capacity

    api = MockApi(MockConfig(requests_per_minute=1_000, tokens_per_minute=400_000, output_tokens_per_minute=80_000))
    settings = Settings(request_url=MESSAGES_URL, api_key=None, max_requests_per_minute=6_000)
    capacity = run_virtual(auto_capacity(settings, MockTransport(api), model="claude-haiku-4-5"))
    assert (capacity.requests_per_minute, capacity.tokens_per_minute, capacity.output_tokens_per_minute) == (1_000, 400_000, 80_000)
    assert len(api.record) == 1, "one small request asked"
    told = Settings(request_url=MESSAGES_URL, api_key=None, max_requests_per_minute=600, max_output_tokens_per_minute=50_000)
    capacity = run_virtual(auto_capacity(told, MockTransport(api), model="claude-haiku-4-5"))
    assert (capacity.requests_per_minute, capacity.output_tokens_per_minute) == (600, 50_000) and len(api.record) == 1, "all told: nothing asked"
