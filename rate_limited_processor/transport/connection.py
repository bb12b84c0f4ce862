"""Connections that never let one request's row hold another request's answer: aiohttp's connector and
protocol, counting the answers asked for against those that came (used by `http.AiohttpTransport`)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

logger = logging.getLogger("rate_limited_processor")


class _StrictConnector(aiohttp.TCPConnector):
    """A connector whose connections never let one request's row hold another request's answer.

    An HTTP/1.1 server answers each request once, in order, and nothing else. A server that pushes an answer nobody
    asked for (onto an idle connection, or a second one beside a request's own) would have it read as the answer to
    the next request sent on that connection, and every later request there would get its predecessor's. So (see
    `_StrictProtocol`, which counts answers against requests): a connection that got bytes while no answer was
    awaited, or more answers than requests, is never reused, and the answer read on it is not trusted
    (`AiohttpTransport.send` makes it no answer: the request is sent again). Once any connection has done it, the
    server is not trusted with reuse at all: no pooled connection is reused, an answer still to come on one that was
    reused is not trusted, and every new connection carries one request and is closed after its answer. (A push that
    crosses a request on the wire before any sign of the server's habit cannot be told from that request's answer
    by any HTTP/1.1 client: at most the requests in flight on reused connections at that moment.) The checks are
    counters: no extra system call per request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Whether a server of this connector's has sent bytes nobody asked for.
        self.surplus = _Surplus()
        # aiohttp's protocol factory, a private attribute it has long had (`functools.partial(ResponseHandler, ...)`).
        self._factory = functools.partial(_StrictProtocol, loop=self._loop, surplus=self.surplus)  # type: ignore[assignment]


class _Surplus:
    """Shared by a connector's connections: a server of theirs has sent what nobody asked for (said once)."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def note(self) -> None:
        if not self.seen:
            self.seen = True
            logger.warning(
                "the server sent a response nobody asked for on a kept-alive connection; such answers are not trusted (the request "
                "is sent again), and from now on every request goes on a connection of its own"
            )


class _StrictProtocol(ResponseHandler):
    """aiohttp's protocol, counting the answers it asked for against those that came.

    `set_response_params` is called once per request, just before it is sent: one answer is then awaited. Each
    response head parsed (`feed_data`) is one answer. Bytes arriving while no answer is awaited and none is being
    read, or an answer beyond those awaited, make the connection `unasked`: never reused, and its answer not
    trusted.
    """

    def __init__(self, *args: Any, surplus: _Surplus, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._surplus = surplus
        self._awaited = 0
        #: Requests sent on this connection.
        self.requests = 0
        #: This connection carried bytes nobody asked for.
        self.unasked = False

    def _unasked(self) -> None:
        self.unasked = True
        self.force_close()
        self._surplus.note()

    @property
    def suspect(self) -> bool:
        """An answer read now may be another request's: this connection got bytes nobody asked for, or it was reused
        (it had answered before) on a server known to push them, where the answer may be its previous request's."""
        return self.unasked or (self.requests > 1 and self._surplus.seen)

    def set_response_params(self, **kwargs: Any) -> None:
        self._awaited = 1
        self.requests += 1
        super().set_response_params(**kwargs)
        if self._surplus.seen:  # a server that pushes is given no connection to push onto: one request each
            self.force_close()

    def data_received(self, data: bytes) -> None:
        if data and self._awaited <= 0 and (self._payload is None or self._payload.is_eof()):
            self._unasked()  # nothing awaited, nothing being read
        super().data_received(data)

    def feed_data(self, data: Any, size: int = 0) -> None:
        self._awaited -= 1  # one response head
        if self._awaited < 0:
            self._unasked()
        super().feed_data(data, size)

    def is_connected(self) -> bool:
        return not self._surplus.seen and super().is_connected() and not self.should_close
