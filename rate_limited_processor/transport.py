"""The network behind a seam: what the runner needs from it is one call, `send(request) -> response`.

Usage::

    transport = AiohttpTransport(max_connections=1_000)        # the default: real HTTP
    response = await transport.send(TransportRequest(url, body, headers, timeout=600))
    outcome = outcome_of(response, scrub)                        # what retry_policy.classify judges

    # Your own function instead of the network: a model that is not an HTTP API, or a test double.
    async def answer(request: TransportRequest) -> dict:
        return {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    Processor(settings, transport=answer)

A transport answers with the status, headers and body bytes of whatever came back, or raises
`TransportError` when nothing did (refused, unresolvable, TLS, reset, timed out). It never judges an
answer: `retry_policy.classify` does that, once, for every transport alike.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp

from .credentials import Scrubber
from .errors import NoAnswer, TransportError
from .retry_policy import HTTPOutcome

__all__ = [
    "TransportRequest",
    "TransportResponse",
    "Transport",
    "SendFunction",
    "AiohttpTransport",
    "FunctionTransport",
    "as_transport",
    "outcome_of",
    "outcome_of_error",
    "json_response",
]

#: Error bodies are kept for messages only; a gateway's HTML page need not be kept whole.
MAX_ERROR_TEXT = 2_000


@dataclass(frozen=True, slots=True)
class TransportRequest:
    """One attempt to send: POST `body` as JSON to `url` with `headers`, giving up after `timeout` seconds."""

    url: str
    body: Mapping[str, Any]
    #: Hold the key: never shown in a repr.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class TransportResponse:
    """What came back: the status, the headers (names in lower case) and the body's bytes."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> TransportResponse:
    """A response carrying `payload` as JSON: what a function transport returns for a plain dict."""
    return TransportResponse(status, {"content-type": "application/json", **(headers or {})}, json.dumps(payload).encode())


@runtime_checkable
class Transport(Protocol):
    """What the runner needs from the network."""

    async def send(self, request: TransportRequest) -> TransportResponse:
        """Send once. Whatever the server answered comes back; no answer at all raises TransportError."""
        ...

    async def aclose(self) -> None:
        """Release connections. The runner closes the transports it made, never one it was given."""
        ...


#: A user's own transport as a plain function: takes the request, returns a response, or a dict that is the
#: JSON body of a 200. It may be sync or async.
SendFunction = Callable[[TransportRequest], Awaitable[TransportResponse | Mapping[str, Any]] | TransportResponse | Mapping[str, Any]]


class FunctionTransport:
    """A function as the transport, as httpx's MockTransport: for tests, and for models that are not HTTP APIs.

    A dict it returns is a 200 with that JSON body. `TransportError` means no answer; any other exception it
    raises is taken as no answer too (and retried like one), its text becoming the attempt's error.
    """

    __slots__ = ("_send",)

    def __init__(self, send: SendFunction) -> None:
        self._send = send

    def __repr__(self) -> str:
        return f"FunctionTransport({getattr(self._send, '__qualname__', self._send)!r})"

    async def send(self, request: TransportRequest) -> TransportResponse:
        try:
            async with asyncio.timeout(request.timeout):
                answer = self._send(request)
                if inspect.isawaitable(answer):
                    answer = await answer
        except TransportError:
            raise
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {request.timeout:g}s") from None
        except Exception as error:
            raise TransportError(NoAnswer.BROKEN, f"{type(error).__name__}: {error}") from error
        if isinstance(answer, TransportResponse):
            return answer
        if isinstance(answer, Mapping):
            return json_response(dict(answer))
        raise TypeError(f"a transport function must return a TransportResponse or a dict, not {type(answer).__name__}")

    async def aclose(self) -> None:
        return None


class AiohttpTransport:
    """Real HTTP through one aiohttp session: one connection per request in flight, no per-host cap.

    The session is made on the first send, inside the running loop, as aiohttp wants.
    """

    __slots__ = ("max_connections", "_session")

    def __init__(self, max_connections: int = 1_000, *, session: aiohttp.ClientSession | None = None) -> None:
        self.max_connections = max_connections
        self._session = session

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self.max_connections})"

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    async def send(self, request: TransportRequest) -> TransportResponse:
        session = self._session_now()
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        try:
            async with session.post(request.url, json=request.body, headers=request.headers, timeout=timeout) as response:
                body = await response.read()
                headers = {name.lower(): value for name, value in response.headers.items()}
                return TransportResponse(response.status, headers, body)
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {request.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:  # sockets can fail below aiohttp's own exception types
            raise TransportError(_why_no_answer(error), f"{type(error).__name__}: {error}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _why_no_answer(error: BaseException) -> NoAnswer:
    """Sort aiohttp's and the socket's failures into the few that matter for what to do next."""
    if isinstance(error, (aiohttp.ClientSSLError, ssl.SSLError)):
        return NoAnswer.TLS
    if isinstance(error, aiohttp.ClientConnectorError):
        return NoAnswer.DNS if isinstance(error.os_error, socket.gaierror) else NoAnswer.CONNECT
    if isinstance(error, socket.gaierror):
        return NoAnswer.DNS
    if isinstance(error, ConnectionRefusedError):
        return NoAnswer.CONNECT
    return NoAnswer.BROKEN


def as_transport(transport: Transport | SendFunction) -> Transport:
    """A Transport as it is; a function wrapped in a FunctionTransport."""
    if isinstance(transport, Transport):
        return transport
    if callable(transport):
        return FunctionTransport(transport)
    raise TypeError(f"transport must be a Transport or a function, not {type(transport).__name__}")


def outcome_of(response: TransportResponse, scrub: Scrubber) -> HTTPOutcome:
    """The outcome `classify` judges: a 2xx JSON body parsed as is; anything else scrubbed before it is read,
    since an error page that echoes a request header must not leak the key, whole or in part."""
    text = response.body.decode("utf-8", errors="replace")
    parsed = _json_or_none(text)
    if 200 <= response.status < 300 and isinstance(parsed, dict):
        return HTTPOutcome(status=response.status, headers=response.headers, body=parsed)
    text = scrub(text)
    return HTTPOutcome(status=response.status, headers=response.headers, body=_json_or_none(text), text=text[:MAX_ERROR_TEXT])


def outcome_of_error(error: TransportError, scrub: Scrubber) -> HTTPOutcome:
    """The outcome of an attempt that got no answer."""
    return HTTPOutcome(status=None, exception=scrub(str(error)), no_answer=error.kind)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read: not an answer either way
        return None
