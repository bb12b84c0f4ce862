"""`--mode batch` with an Azure OpenAI deployment URL: Global Batch under the resource's /openai, with its
api-version on every call, endpoints named without /v1, and each line naming the deployment as its model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.files.resume import sidecar_path
from rate_limited_processor.jobs.batch_job import BatchOptions, run_batch_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockServer, MockTransport
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.providers.azure import batch_place
from tests.helpers import MOCK_ORIGIN, chat_request, read_rows, write_jsonl
from tests.test_batch_mode import DiesAfter, Killed
from tests.virtual_time import run_virtual

AZURE_URL = f"{MOCK_ORIGIN}/openai/deployments/my-batch/chat/completions?api-version=2024-10-21"
KEY = "azure-key-0123456789abcdef"


def azure_line(i: int) -> dict[str, Any]:
    """A chat line as Azure users write them: the deployment in the URL, no model in the body."""
    return {name: value for name, value in chat_request(i).items() if name != "model"}


class Watched:
    """The mock, and every call's URL."""

    def __init__(self, api: MockApi) -> None:
        self.transport = MockTransport(api)
        self.urls: list[str] = []

    async def call(self, call: Any, sink: Any = None) -> Any:
        self.urls.append(call.url)
        return await self.transport.call(call, sink)


def run(api: MockApi, input_path: Path, output_path: Path, http: Any, **options: Any) -> Any:
    async def main() -> Any:
        return await run_batch_job(
            Settings(request_url=AZURE_URL, api_key=KEY), input_path, output_path, options=BatchOptions(poll_interval=10.0, **options),
            http=http, transport=MockTransport(api), show_progress=False,
        )

    return run_virtual(main())


def test_the_batch_api_of_a_deployment_url_is_the_resources_with_its_api_version() -> None:
    place = batch_place("https://res.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-10-21")
    assert place is not None and (place.root, place.query, place.model) == ("https://res.openai.azure.com/openai", "api-version=2024-10-21", "dep")
    assert place.endpoint("/v1/chat/completions") == "/chat/completions"
    assert batch_place("https://res.openai.azure.com/openai/v1/chat/completions") is None, "the v1 API is OpenAI's way"


def test_an_azure_deployment_url_sends_the_file_through_global_batch_and_every_line_gets_its_answer_once(tmp_path: Path) -> None:
    requests = [azure_line(i) for i in range(120)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(batch_validation_seconds=1.0, batch_processing_seconds=60.0, api_key=KEY))
    watched = Watched(api)

    stats = run(api, input_path, output_path, watched, max_lines=50)

    rows = read_rows(output_path)
    assert Counter(row[2]["id"] for row in rows) == Counter(range(120)) and stats.failed == 0, stats.stop_reason
    assert all(response_matches("chat/completions", {**requests[row[2]["id"]], "model": "my-batch"}, row[1]) for row in rows)
    assert len(api.batches.created) == 3
    assert {url.split("?")[0].removeprefix(MOCK_ORIGIN).split("/")[2] for url in watched.urls} == {"files", "batches"}
    assert all(url.startswith(f"{MOCK_ORIGIN}/openai/") and "api-version=2024-10-21" in url for url in watched.urls)
    for file_id in api.batches.uploads:
        lines = [json.loads(line) for line in api.batches._files[file_id].content.splitlines()]
        assert {(line["url"], line["body"]["model"]) for line in lines} == {("/chat/completions", "my-batch")}
    assert {api.batches._batches[batch_id].endpoint for batch_id in api.batches.created} == {"/chat/completions"}
    assert not sidecar_path(output_path, "batches").exists()


@pytest.mark.parametrize("path", ["/openai/files", "/openai/batches"])
def test_an_azure_run_that_dies_before_it_records_an_upload_or_a_batch_never_makes_it_twice(tmp_path: Path, path: str) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [azure_line(i) for i in range(100)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(batch_validation_seconds=1.0, batch_processing_seconds=60.0))
    with pytest.raises(Killed):
        run(api, input_path, output_path, DiesAfter(api, "POST", path, nth=1), max_lines=50)

    run(api, input_path, output_path, MockTransport(api), max_lines=50)

    assert Counter(row[2]["id"] for row in read_rows(output_path)) == Counter(range(100))
    assert (len(api.batches.uploads), len(api.batches.created)) == (2, 2), "what the dead run sent was found, not sent again"


def test_the_mock_refuses_what_azure_refuses(tmp_path: Path) -> None:
    api = MockApi(MockConfig())
    transport = MockTransport(api)

    async def main() -> list[int]:
        from rate_limited_processor.jobs.batch_api import HTTPCall

        no_version = await transport.call(HTTPCall("GET", f"{MOCK_ORIGIN}/openai/batches"))
        openai_endpoint = await transport.call(HTTPCall(
            "POST", f"{MOCK_ORIGIN}/openai/batches?api-version=2024-10-21",
            body=json.dumps({"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"}).encode(),
        ))
        return [no_version.status, openai_endpoint.status]

    assert run_virtual(main()) == [404, 400]


async def test_over_loopback_with_the_api_key_header(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [azure_line(i) for i in range(30)])
    output_path = tmp_path / "results.jsonl"
    async with MockServer(MockConfig(batch_validation_seconds=0.05, batch_processing_seconds=0.2, api_key=KEY)) as server:
        url = server.azure_url("chat/completions", deployment="my-batch")
        stats = await run_batch_job(
            Settings(request_url=url, api_key=KEY), input_path, output_path, options=BatchOptions(poll_interval=0.05), show_progress=False,
        )
        created = len(server.api.batches.created)
    assert (stats.succeeded, stats.stop_reason, created) == (30, None, 1)
