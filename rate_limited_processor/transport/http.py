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

Streams. A request with `stream=True` (its body asks for one: `streaming.streamed_body`) is read as it
arrives, and `receive` turns a 2xx `text/event-stream` into the answer an unstreamed request would have got,
with the time of its first byte, of each event that carried output, and of its last byte
(`TransportResponse.timings`). A stream that breaks off or ends before its end marker (`[DONE]`, `message_stop`) is a
`TransportError`, retried like a reset: never half an answer. Every transport reads streams this one way: a
function transport may return a `StreamingResponse` (its body as an async iterable of bytes).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import field
from typing import Any, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from ..base import strict_json
from ..base.errors import NoAnswer, TransportError
from ..base.records import record
from ..config.credentials import Scrubber
from ..core.retry_policy import HTTPOutcome
from .connection import _StrictConnector, _StrictProtocol
from .streaming import EventStreamParser, StreamAssembler, StreamProblem, is_event_stream

__all__ = [
    "TransportRequest",
    "TransportResponse",
    "ReceiveTimings",
    "StreamingResponse",
    "receive",
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
#: The largest response read. The largest real answers (2,048 embeddings of 3,072 floats) are about 80 MB.
MAX_RESPONSE_BYTES = 256 * 1024**2

#: Redirects followed in a row before the last one is taken as the answer.
MAX_REDIRECTS = 5
#: The redirects that keep a POST a POST, with its body; 301, 302 and 303 would turn it into a GET.
_FOLLOWED_REDIRECTS = frozenset({307, 308})

logger = logging.getLogger("rate_limited_processor")


@record
class TransportRequest:
    """One attempt to send: POST `body` as JSON to `url` with `headers`, giving up after `timeout` seconds."""

    url: str
    body: Mapping[str, Any]
    #: Hold the key: never shown in a repr.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 600.0
    #: The body asks for a stream: read the answer as it arrives, and time it.
    stream: bool = False


@record
class ReceiveTimings:
    """When an answer arrived, in seconds after the transport began sending it."""

    first_byte: float
    #: Each moment output of a stream arrived (its first is the first token; events read together count
    #: once); empty when not streamed.
    tokens: tuple[float, ...]
    last_byte: float


@record
class TransportResponse:
    """What came back: the status, the headers (names in lower case) and the body's bytes.

    For a stream, `body` is the reassembled answer as JSON, and `timings` says when its parts came.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    timings: ReceiveTimings | None = None


@record
class StreamingResponse:
    """An answer still arriving: its status and headers, and its body as the bytes come (for `receive`)."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterable[bytes] = field(repr=False)


async def receive(response: StreamingResponse, *, started: float, now: Callable[[], float] | None = None) -> TransportResponse:
    """Read a streaming answer to its end, timing it (`now`: the running loop's clock by default).

    A 2xx `text/event-stream` becomes the unstreamed answer (`streaming.StreamAssembler`); any other answer
    (a 429's JSON, an error page) is read whole, as it came. Raises `TransportError` for a stream that ends
    before its end marker or carries an event that is not JSON, and for a body over MAX_RESPONSE_BYTES.
    """
    clock = now if now is not None else asyncio.get_running_loop().time
    streamed = 200 <= response.status < 300 and is_event_stream(response.headers)
    parser, answer = EventStreamParser(), StreamAssembler()
    chunks: list[bytes] = []
    tokens: list[float] = []
    first_byte: float | None = None
    size = 0
    async for chunk in response.chunks:
        at = clock() - started
        if first_byte is None:
            first_byte = at
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TransportError(NoAnswer.BROKEN, f"the response is more than the {MAX_RESPONSE_BYTES:,} bytes read")
        if not streamed:
            chunks.append(chunk)
            continue
        try:
            output = [answer.add(event) for event in parser.feed(chunk)]
        except StreamProblem as problem:
            raise TransportError(NoAnswer.BROKEN, f"a broken event stream: {problem}") from None
        if any(output) and (not tokens or at > tokens[-1]):  # output read at one moment arrived once
            tokens.append(at)
    last_byte = clock() - started
    timings = ReceiveTimings(first_byte if first_byte is not None else last_byte, tuple(tokens), last_byte)
    if not streamed:
        return TransportResponse(response.status, response.headers, b"".join(chunks), timings)
    if not answer.complete:
        raise TransportError(
            NoAnswer.BROKEN, f"the event stream ended before its end ({answer.end_marker}) after {answer.events} events; the partial answer is not kept"
        )
    try:
        whole = answer.answer()
    except StreamProblem as problem:
        raise TransportError(NoAnswer.BROKEN, f"a broken event stream: {problem}") from None
    body = json.dumps(whole, separators=(",", ":"), ensure_ascii=False).encode()
    return TransportResponse(response.status, response.headers, body, timings)


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


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


#: A user's own transport as a plain function: takes the request, returns a response (a `StreamingResponse`
#: for a stream it times as it comes), or a dict that is the JSON body of a 200. It may be sync or async.
_Answer = TransportResponse | StreamingResponse | Mapping[str, Any]
SendFunction = Callable[[TransportRequest], Awaitable[_Answer] | _Answer]


#: Libraries whose exceptions a send function may let out for "the network failed" (their errors are not OSError).
_NETWORK_LIBRARIES = frozenset({"aiohttp", "httpx", "httpcore", "requests", "urllib3"})


def is_network_error(error: BaseException) -> bool:
    """Whether a send function's exception means "no answer" (retried) rather than a bug in it (the run stops)."""
    if isinstance(error, (OSError, EOFError, TimeoutError, aiohttp.ClientError)):
        return True
    return type(error).__module__.partition(".")[0] in _NETWORK_LIBRARIES


class FunctionTransport:
    """A function as the transport, as httpx's MockTransport: for tests, and for models that are not HTTP APIs.

    A dict it returns is a 200 with that JSON body. A `text/event-stream` answer (a `TransportResponse`, or a
    `StreamingResponse` arriving bit by bit) is reassembled by `receive`, as the network's is. `TransportError`
    means no answer, and so do the network's own errors (`is_network_error`: OSError, TimeoutError, an aiohttp,
    httpx or requests error), retried like a lost connection. Any other exception is a bug in the function: it
    is raised as it is, and the run stops with it as the cause, rather than hide it behind retries and a
    failure row.
    """

    __slots__ = ("_send",)

    def __init__(self, send: SendFunction) -> None:
        self._send = send

    def __repr__(self) -> str:
        return f"FunctionTransport({getattr(self._send, '__qualname__', self._send)!r})"

    async def send(self, request: TransportRequest) -> TransportResponse:
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(request.timeout):
                answer = self._send(request)
                if inspect.isawaitable(answer):
                    answer = await answer
                if isinstance(answer, TransportResponse) and is_event_stream(answer.headers):
                    answer = StreamingResponse(answer.status, answer.headers, _one_chunk(answer.body))
                if isinstance(answer, StreamingResponse):
                    answer = await receive(answer, started=started)
        except TransportError:
            raise
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {request.timeout:g}s") from None
        except Exception as error:
            if not is_network_error(error):
                raise
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

    The session is made on the first send, inside the running loop, as aiohttp wants. A session of its own
    never reuses a connection the server has sent unasked-for bytes on (see `_StrictConnector`); a
    session passed in is used as it is.

    Redirects are followed here, not by aiohttp, so that credentials never reach another origin: a POST
    follows a 307 or 308 (which keep it a POST, with its body), at most `MAX_REDIRECTS` in a row, to http
    or https. On a hop to another origin (scheme, host or port) none of the request's own headers go along:
    they are the key (`Authorization`, Azure's `api-key`) and the user's `--header` values. Any other
    redirect comes back as the answer, and fails with its status.
    """

    __slots__ = ("max_connections", "_session", "_warned")

    def __init__(self, max_connections: int = 1_000, *, session: aiohttp.ClientSession | None = None) -> None:
        self.max_connections = max_connections
        self._session = session
        self._warned: set[tuple[_Origin, _Origin]] = set()

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self.max_connections})"

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _StrictConnector(limit=self.max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    async def send(self, request: TransportRequest) -> TransportResponse:
        session = self._session_now()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + request.timeout
        url = _parsed_url(request.url)
        headers: Mapping[str, str] = {**request.headers, "Content-Type": "application/json"}
        body = strict_json.dumps(request.body)  # once for every hop, with the one encoder
        try:
            for hop in range(MAX_REDIRECTS + 1):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                timeout = _timeout(request.timeout) if hop == 0 else aiohttp.ClientTimeout(total=remaining)
                async with session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False) as response:
                    # The connection is often released already (the answer was read whole): aiohttp keeps its protocol.
                    protocol = getattr(response, "_protocol", None)
                    response_headers = {name.lower(): value for name, value in response.headers.items()}
                    if request.stream or is_event_stream(response_headers):
                        streaming = StreamingResponse(response.status, response_headers, response.content.iter_any())
                        answer = await receive(streaming, started=started, now=loop.time)
                    elif _framed_by_its_length(response):
                        answer = TransportResponse(response.status, response_headers, await response.read())
                    else:
                        answer = TransportResponse(response.status, response_headers, await _read_capped(response))
                if isinstance(protocol, _StrictProtocol) and protocol.suspect:
                    raise TransportError(
                        NoAnswer.BROKEN,
                        "the server sent more answers on this connection than it was asked for: which is this request's cannot be known",
                    )
                target = _redirect_target(url, answer) if hop < MAX_REDIRECTS else None
                if target is None:
                    return answer
                if _origin(target) != _origin(url):
                    self._note_cross_origin(url, target)
                    headers = {"Content-Type": "application/json"}  # credentials stay with the origin they were given for
                url = target
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {request.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:  # sockets can fail below aiohttp's own exception types
            raise TransportError(_why_no_answer(error), f"{type(error).__name__}: {error}") from None
        raise AssertionError("unreachable: the last hop returns its answer")

    def _note_cross_origin(self, source: URL, target: URL) -> None:
        pair = (_origin(source), _origin(target))
        if pair not in self._warned:
            self._warned.add(pair)
            logger.warning("%s redirects to another origin, %s: following it without the key or the --header values", _show(source), _show(target))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@functools.lru_cache(maxsize=64)
def _parsed_url(url: str) -> URL:
    """A run sends to one URL or a few, and parsing one costs more than the rest of what a send does here."""
    return URL(url)


@functools.lru_cache(maxsize=16)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


#: An origin as browsers define it: scheme, host, port (the default port when none is given).
_Origin = tuple[str, str | None, int | None]


def _origin(url: URL) -> _Origin:
    return (url.scheme, url.host, url.port)


def _redirect_target(url: URL, response: TransportResponse) -> URL | None:
    """Where a redirect that a POST may follow points (307, 308; to http or https), else None."""
    if response.status not in _FOLLOWED_REDIRECTS:
        return None
    location = response.headers.get("location")
    if not location:
        return None
    try:
        target = url.join(URL(location))
    except ValueError:
        return None
    return target if target.scheme in ("http", "https") and target.host else None


def _show(url: URL) -> str:
    """An origin for a message: never the path or query, which may carry anything."""
    return f"{url.scheme}://{url.host}:{url.port}"


def _framed_by_its_length(response: aiohttp.ClientResponse) -> bool:
    """The body has a length and is not compressed: read whole, it cannot grow beyond it. Else it is read by
    `_read_capped`. A length over MAX_RESPONSE_BYTES is refused at once: no answer, not an exhausted memory."""
    length = response.content_length
    if length is not None and length > MAX_RESPONSE_BYTES:
        raise TransportError(NoAnswer.BROKEN, f"the response is {length:,} bytes, more than the {MAX_RESPONSE_BYTES:,} read")
    return length is not None and "content-encoding" not in response.headers


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, up to MAX_RESPONSE_BYTES: a server streaming without end (or a compressed bomb) is
    no answer, not an exhausted memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TransportError(NoAnswer.BROKEN, f"the response is more than the {MAX_RESPONSE_BYTES:,} bytes read")
        chunks.append(chunk)
    return b"".join(chunks)


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
    """The outcome `classify` judges: the body read as strict JSON, and the start of its text for messages.

    Whatever of it may be written or logged is scrubbed first: every string of the decoded body (a server
    echoing the request's headers must not leak the key, even escaped as `\\/` or `\\u0073`), the text, and
    the header values. When neither a secret nor an escape that could spell one is in the body (almost
    always), that costs a few substring searches.
    """
    text = response.body.decode("utf-8", errors="replace")
    body, unreadable = _read_json(response.body, text)
    headers = response.headers
    if scrub.may_hide_a_secret(f"{headers.get('x-request-id', '')}\n{headers.get('location', '')}"):  # the ones rows and messages show
        headers = {name: scrub(value) for name, value in headers.items()}
    if not scrub.may_hide_a_secret(text):
        return HTTPOutcome(status=response.status, headers=headers, body=body, text=text[:MAX_ERROR_TEXT], unreadable=unreadable)
    return HTTPOutcome(
        status=response.status, headers=headers, body=scrub.scrub_decoded(body, text), text=scrub.scrub_json_text(text, MAX_ERROR_TEXT),
        unreadable=unreadable,
    )


def outcome_of_error(error: TransportError, scrub: Scrubber) -> HTTPOutcome:
    """The outcome of an attempt that got no answer."""
    return HTTPOutcome(status=None, exception=scrub(str(error)), no_answer=error.kind)


def _read_json(body: bytes, text: str) -> tuple[Any, str | None]:
    """The body's value (None if it has none), and why it could not be read when it looked like JSON.

    The bytes are read as they came; bytes that are not UTF-8 are read as decoded, with replacement characters.
    """
    try:
        return strict_json.loads(body), None
    except strict_json.InvalidJSON:
        pass
    try:
        return strict_json.loads(text), None
    except strict_json.InvalidJSON as error:  # not JSON, or JSON too deep or too large to carry: not an answer
        return None, None if error.syntax else error.reason
