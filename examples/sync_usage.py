"""The blocking API, for scripts and notebooks: a plain `for` loop over results, no `async` anywhere.

Run: `.venv/bin/python examples/sync_usage.py`. It embeds a few texts against the project's mock API,
started in a child process. For the real API, drop the mock and give
`Settings(request_url="https://api.openai.com/v1/embeddings")`: the key is read from $OPENAI_API_KEY.

`process_requests_sync` runs the processor on an event loop of its own in a helper thread, so it works
the same in a script and in a Jupyter cell, where a loop is already running.
"""

from __future__ import annotations

from rate_limited_processor import Limits, Settings, process_requests_sync
from rate_limited_processor.mock_server.child import MockProcess

TEXTS = ["a cat sat on the mat", "the quick brown fox", "rate limits are per minute", "tokens, not characters"]


def main() -> None:
    with MockProcess("--requests_per_minute", "600") as mock:
        settings = Settings(request_url=mock.url("embeddings"), api_key=None, limits=Limits(requests_per_minute=600, tokens_per_minute=100_000))
        requests = ({"model": "text-embedding-3-small", "input": text, "metadata": {"text": text}} for text in TEXTS)
        vectors = {}
        for result in process_requests_sync(requests, settings):
            if result.response is not None:
                vectors[result.metadata["text"]] = result.response["data"][0]["embedding"]
            else:
                print(f"{result.metadata['text']!r} failed: {result.errors[-1]}")
    for text, vector in vectors.items():
        print(f"{text!r:32} -> {len(vector)} numbers, first {vector[0]:+.3f}")
    assert len(vectors) == len(TEXTS)


if __name__ == "__main__":
    main()
