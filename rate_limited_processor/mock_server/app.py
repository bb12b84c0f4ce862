"""The mock on a real socket: aiohttp routes every POST to `MockApi.answer` and writes what it answers.

Routes:
    POST, GET anything the API (see `api.py` for the paths it serves; any other path is a JSON 404)
    GET  /mock/stats   the record's summary, and the Batch API's files and batches, as JSON
"""

from __future__ import annotations

import contextlib
import socket
import struct
from http import HTTPStatus

from aiohttp import web

from .api import Drop, MockApi, MockRequest, StreamReply
from .batches import MAX_FILE_BYTES
from .reply import Reply, json_reply

__all__ = ["create_app", "STATS_PATH", "MAX_BODY_BYTES"]

STATS_PATH = "/mock/stats"
#: Bodies up to this size are read: a Batch input file may be 200 MB, and the form around it a little more.
MAX_BODY_BYTES = MAX_FILE_BYTES + 1024**2
#: SO_LINGER on, timeout 0: closing the socket sends RST, so the client sees "connection reset by peer".
_LINGER_RESET = struct.pack("ii", 1, 0)


def _to_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type, headers=reply.headers)


def _reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset and no response, as a crashing proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def _stream(request: web.Request, reply: StreamReply) -> web.StreamResponse:
    """Write each event as the mock produces it; a client that leaves ends the stream (the record says so)."""
    response = web.StreamResponse(status=reply.status, headers={**reply.headers, "Cache-Control": "no-cache"})
    response.content_type = reply.content_type
    async with contextlib.aclosing(reply.chunks) as chunks:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


def create_app(api: MockApi) -> web.Application:
    """The aiohttp application serving `api`.

    Run it with `handler_cancellation=True` (as `MockServer` does), so that a client giving up on a "hang"
    or a slow answer cancels the handler instead of leaving it sleeping for an hour.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        answer = await api.answer(MockRequest(request.path, raw, headers, dict(request.query), request.method))
        if isinstance(answer, Drop):
            _reset_connection(request)
            # aiohttp finds the transport gone and drops this response unsent: the reset is the answer.
            return web.Response(status=HTTPStatus.NO_CONTENT)
        if isinstance(answer, StreamReply):
            return await _stream(request, answer)
        return _to_response(answer)

    async def stats(request: web.Request) -> web.StreamResponse:
        return _to_response(json_reply(200, {**api.record.summary(), "batches": api.batches.summary(), "message_batches": api.message_batches.summary()}))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post("/{path:.*}", serve)
    app.router.add_get("/{path:.*}", serve)
    return app
