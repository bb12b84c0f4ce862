"""The mock as the runner's transport: the same strict API, in process, with no socket.

Usage::

    api = MockApi(MockConfig(requests_per_minute=600, ratelimit_headers=False))
    processor = Processor(Settings(request_url="http://mock/v1/chat/completions"), transport=MockTransport(api))

Only the URL's path and query matter. A reset is a `TransportError`; a hang lasts until the request's
timeout. A streamed answer is read through `transport.receive`, as the network's is, its events timed as
the mock sends them. `call` is the Batch API's seam (`batch_api.BatchHTTP`): any method, any body, to the
same mock. On a virtual-time event loop (see `tests/virtual_time.py`) the mock's buckets, its latency and
the client's waits all run on the same virtual clock, so minutes of rate limiting take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import IO
from urllib.parse import parse_qsl, urlsplit

from ..base.errors import NoAnswer, TransportError
from ..jobs.batch_api import HTTPCall
from ..transport.http import StreamingResponse, TransportRequest, TransportResponse, receive
from .api import Drop, MockApi, MockRequest, StreamReply
from .reply import Reply

__all__ = ["MockTransport"]


class MockTransport:
    """A `Transport` that hands every request to a `MockApi`."""

    __slots__ = ("api",)

    def __init__(self, api: MockApi) -> None:
        self.api = api

    def __repr__(self) -> str:
        return f"MockTransport({self.api!r})"

    async def send(self, request: TransportRequest) -> TransportResponse:
        url = urlsplit(request.url)
        headers = {name.lower(): value for name, value in request.headers.items()}
        mock_request = MockRequest(url.path, json.dumps(request.body).encode(), headers, dict(parse_qsl(url.query)))
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(request.timeout):
                answer = await self.api.answer(mock_request)
                if isinstance(answer, StreamReply):
                    async with contextlib.aclosing(answer.chunks) as chunks:
                        return await receive(StreamingResponse(answer.status, _headers(answer), chunks), started=started)
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {request.timeout:g}s") from None
        if isinstance(answer, Drop):
            raise TransportError(NoAnswer.BROKEN, "ClientOSError: [Errno 104] Connection reset by peer")
        return TransportResponse(answer.status, _headers(answer), answer.body)

    async def call(self, call: HTTPCall, sink: IO[bytes] | None = None) -> TransportResponse:
        """A call of the Batch API (a GET, a multipart upload), answered by the same mock."""
        url = urlsplit(call.url)
        headers = {name.lower(): value for name, value in call.headers.items()}
        headers.setdefault("host", url.netloc)  # as HTTP sends it
        answer = await self.api.answer(MockRequest(url.path, call.body, headers, dict(parse_qsl(url.query)), call.method))
        if isinstance(answer, Drop):
            raise TransportError(NoAnswer.BROKEN, "ClientOSError: [Errno 104] Connection reset by peer")
        assert not isinstance(answer, StreamReply), "the Files and Batches endpoints never stream"
        if sink is not None and 200 <= answer.status < 300:
            sink.write(answer.body)
            return TransportResponse(answer.status, {"content-type": answer.content_type}, b"")
        return TransportResponse(answer.status, {"content-type": answer.content_type, **answer.headers}, answer.body)

    async def aclose(self) -> None:
        return None


def _headers(answer: Reply | StreamReply) -> dict[str, str]:
    headers = {name.lower(): value for name, value in answer.headers.items()}
    headers["content-type"] = answer.content_type
    return headers
