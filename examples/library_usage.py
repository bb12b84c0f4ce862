"""Use the processor from Python: no subprocess, no files. Run: `.venv/bin/python examples/library_usage.py`.

It embeds a few texts against the project's mock API. For the real API, drop the mock and use
`Settings(request_url="https://api.openai.com/v1/embeddings", api_key=os.environ["OPENAI_API_KEY"], ...)`.
"""

from __future__ import annotations

import asyncio

from rate_limited_processor import Limits, Processor, RunStopped, Settings, process_requests
from rate_limited_processor.mock_server import MockConfig, MockServer

TEXTS = ["a cat sat on the mat", "the quick brown fox", "rate limits are per minute", "tokens, not characters"]


async def main() -> None:
    async with MockServer(MockConfig(requests_per_minute=600, tokens_per_minute=100_000)) as mock:
        settings = Settings(request_url=mock.url("embeddings"), limits=Limits(requests_per_minute=600, tokens_per_minute=100_000))

        # The simplest form: any iterable (or async iterable) of request bodies in, one result per request out,
        # in completion order. "metadata" rides along unsent, so each result can be matched to its input.
        requests = ({"model": "text-embedding-3-small", "input": text, "metadata": {"text": text}} for text in TEXTS)
        async for result in process_requests(requests, settings):
            if result.response is not None:  # it succeeded
                vector = result.response["data"][0]["embedding"]
                print(f"{result.metadata['text']!r:32} -> {len(vector)} numbers, first {vector[0]:+.3f}")
            else:
                print(f"{result.metadata['text']!r:32} failed: {result.errors[-1]}")

        # With a Processor you also get the run's stats (and RunStopped if a bad key or quota stopped it).
        processor = Processor(settings)
        try:
            results = [result async for result in processor.process({"model": "text-embedding-3-small", "input": t} for t in TEXTS)]
        except RunStopped as stopped:
            print(f"stopped early: {stopped}")
        else:
            stats = processor.stats
            print(f"\n{len(results)} results again: {stats.succeeded} succeeded, {stats.attempts} attempts in {stats.elapsed:.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
