"""Your own function as the transport: a model that is not an HTTP API, or a stand-in for tests.

Run: `.venv/bin/python examples/custom_transport.py`. Nothing leaves this machine.

The processor needs one thing from the network: send a request, get an answer. Give it a function instead
and everything else stays: pacing under the limits, retries with backoff, the 429 pause, one result per
request. The function gets a `TransportRequest` (url, body, headers, timeout) and returns either a dict
(the JSON body of a 200) or a `TransportResponse` (any status, headers and bytes); raising
`TransportError` means "no answer", which is retried like a dropped connection.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from rate_limited_processor import (
    Limits,
    NoAnswer,
    Processor,
    Settings,
    TransportError,
    TransportRequest,
    TransportResponse,
    json_response,
)

rng = random.Random(1)


async def local_model(request: TransportRequest) -> dict[str, Any] | TransportResponse:
    """A pretend model: answers in 20 ms, is sometimes overloaded, and now and then drops the connection."""
    await asyncio.sleep(0.02)
    draw = rng.random()
    if draw < 0.05:
        return json_response({"error": {"message": "model overloaded", "type": "server_error"}}, status=503)
    if draw < 0.08:
        raise TransportError(NoAnswer.BROKEN, "the worker process restarted")
    question = request.body["messages"][-1]["content"]
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": question[::-1]}, "finish_reason": "stop"}]}


async def main() -> None:
    settings = Settings(
        request_url="http://local-model/v1/chat/completions",  # names the endpoint, for token estimates
        api_key=None,
        limits=Limits(requests_per_minute=3_000, tokens_per_minute=None),  # 50 a second
    )
    requests = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}], "metadata": {"i": i}} for i in range(60)]
    processor = Processor(settings, transport=local_model)
    answers: dict[int, str] = {}
    async with processor.run(requests) as results:
        async for result in results:
            if result.response is not None:
                answers[result.metadata["i"]] = result.response["choices"][0]["message"]["content"]
    stats = processor.stats
    print(f"{len(answers)} of {len(requests)} answered in {stats.elapsed:.1f}s ({stats.attempts} attempts, {stats.retries} retries)")
    print(f"answer to question 7: {answers[7]!r}")
    assert len(answers) == len(requests), "every request was answered"


if __name__ == "__main__":
    asyncio.run(main())
