"""The Files and Batches API, as `--mode batch` uses it: upload an input file, create a batch, ask after it, download.

Usage::

    api = BatchAPI("https://api.openai.com/v1", headers, http=AiohttpBatchHTTP())
    file = await api.upload("results.jsonl.part-0001.jsonl", content)              # POST /files, purpose batch
    batch = await api.create(file["id"], "/v1/chat/completions", {"rlp_part": "…"})  # POST /batches, 24h
    batch = await api.get(batch["id"])                                               # GET /batches/{id}
    await api.download(batch["output_file_id"], sink)                                # GET /files/{id}/content

The API's shapes (paths, listings, the upload's fields, the create body, statuses) are `providers/openai.py`'s;
here are the calls (`BatchAPI`), and the HTTP they go over. Azure's place for the same API is its own
(`providers/azure.py`'s `batch_place`: the root and query given here).

Every call goes to the API root's origin, the only one the key is sent to; a redirect is not followed (it
fails, naming its status). A call that gets no answer, a 429 or a 5xx is tried again after a backoff (or the wait its
`retry-after-ms` or `retry-after` header asks for, up to `MAX_HINTED_CALL_DELAY`), up to `CALL_ATTEMPTS` times; any
other error status raises `BatchAPIError` with the API's message, scrubbed of credentials. The HTTP itself is behind
a seam (`BatchHTTP`): aiohttp here, the mock's `MockTransport` in tests.

A call that makes something (an upload, a create) is never tried again blindly: no answer, or a 5xx (a gateway's
504 often comes after the API made the batch), leaves it unknown whether it was made, so what it may have made is
looked for first (`_make`), and made again only when none is found. A 429 is tried again at once: the API (or a
gateway's rate limit in front of it) refused the call before doing it. The one gap left: a batch made but not yet
listed when it is looked for (listings are not promised to be instant).

Ids the API gives (files, batches) go into URL paths and into the cancel command printed for a user: one that is
not a plain id (`SAFE_ID`: letters, digits, "_" and "-") is refused, naming the call that gave it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..base import strict_json
from ..base.clock import LOOP_CLOCK, Clock
from ..base.errors import NoAnswer, ProcessorError, TransportError
from ..config.credentials import Scrubber
from ..core.wait_hints import retry_after_seconds
from ..providers import openai as api_shapes
from ..providers.endpoints import resolve_url
from ..transport.http import TransportResponse
from .batch_state import PART_METADATA_KEY, Part

__all__ = ["HTTPCall", "BatchHTTP", "AiohttpBatchHTTP", "BatchAPI", "BatchAPIError", "CALL_ATTEMPTS", "multipart_form", "SAFE_ID", "checked_id", "api_root"]

#: Tries of one call to the Files or Batches API before the run stops (no answer, 429, 5xx).
CALL_ATTEMPTS = 6
#: Seconds before the second try of a call; doubled for each after it, up to `MAX_CALL_DELAY`.
FIRST_CALL_DELAY = 1.0
MAX_CALL_DELAY = 30.0
#: The longest wait between tries a server's `retry-after-ms` or `retry-after` is obeyed for; its hint replaces the
#: backoff, up to this.
MAX_HINTED_CALL_DELAY = 120.0
#: Seconds one call may take: an upload of 200 MB on a slow line takes minutes.
CALL_TIMEOUT = 900.0
#: Most batches looked through when finding one a killed run created but did not record.
MAX_BATCHES_SEARCHED = 1_000
#: What a file or batch id must look like to be put in a URL path or a printed command (OpenAI's "batch_abc123" and
#: "file-abc123", Azure's "batch_<uuid>", Anthropic's "msgbatch_01...").
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


class BatchAPIError(ProcessorError):
    """The Files or Batches API refused a call, or gave no answer after every try. `status`: the refusal's HTTP
    status (404: the API does not know the file or batch), None when no answer came. `maybe_made`: a call that makes
    something got no answer or a 5xx, and was not tried again: it may have been made all the same."""

    def __init__(self, message: str, *, status: int | None = None, maybe_made: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.maybe_made = maybe_made


def checked_id(value: Any, what: str) -> str:
    """`value` if it is a plain id (`SAFE_ID`), else BatchAPIError saying `what` it was (and whose answer)."""
    if isinstance(value, str) and SAFE_ID.fullmatch(value):
        return value
    shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
    raise BatchAPIError(f"{what} is not a plain id (letters, digits, _ and -): {shown}; it is not used")


@dataclass(frozen=True, slots=True)
class HTTPCall:
    """One call: a method, a URL, headers (they hold the key: never shown) and a body."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = b""
    timeout: float = CALL_TIMEOUT


@runtime_checkable
class BatchHTTP(Protocol):
    """What batch mode needs from the network: one call, its answer. With `sink`, the body is written there."""

    async def call(self, call: HTTPCall, sink: IO[bytes] | None = None) -> TransportResponse:
        """The answer (status, headers, body, or b"" when written to `sink`); TransportError when none came."""
        ...


class AiohttpBatchHTTP:
    """Real HTTP through one aiohttp session, made on the first call. Redirects are never followed."""

    __slots__ = ("_session",)

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return "AiohttpBatchHTTP()"

    async def call(self, call: HTTPCall, sink: IO[bytes] | None = None) -> TransportResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=call.timeout)
        try:
            async with self._session.request(
                call.method, call.url, data=call.body or None, headers=call.headers, timeout=timeout, allow_redirects=False
            ) as response:
                headers = {name.lower(): value for name, value in response.headers.items()}
                if sink is not None and 200 <= response.status < 300:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        sink.write(chunk)
                    return TransportResponse(response.status, headers, b"")
                return TransportResponse(response.status, headers, await response.read())
        except TimeoutError:
            raise TransportError(NoAnswer.TIMEOUT, f"TimeoutError: no complete response within {call.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:
            raise TransportError(NoAnswer.BROKEN, f"{type(error).__name__}: {error}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def multipart_form(fields: Mapping[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one file: (body, its content type)."""
    boundary = f"rate-limited-processor-{secrets.token_hex(12)}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode() for name, value in fields.items()]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode() + content + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class BatchAPI:
    """The calls batch mode makes, to one API root ("https://api.openai.com/v1"), with the run's auth headers."""

    __slots__ = ("root", "query", "_headers", "_http", "_scrub", "_clock")

    def __init__(
        self, root: str, headers: Mapping[str, str], *, http: BatchHTTP, scrub: Scrubber, clock: Clock = LOOP_CLOCK, query: str = "",
    ) -> None:
        """`query` is added to every call's URL (Azure's "api-version=...")."""
        self.query = query
        self.root = root.rstrip("/")
        self._headers = dict(headers)
        self._http = http
        self._scrub = scrub
        self._clock = clock

    def __repr__(self) -> str:
        return f"BatchAPI({self.root!r})"

    # What a batch's state says, as `providers/openai.py` reads it (a Message Batches API has its own `status` and
    # `ended`): its status, for a message; whether it runs; has ended with files to collect (completed, expired or
    # cancelled; not failed); failed for the enqueued-token limit (it can be created again once an earlier one ends);
    # why it failed; and the ids of its files to download (output, then errors).
    status = staticmethod(api_shapes.batch_status)
    running = staticmethod(api_shapes.batch_running)
    ended = staticmethod(api_shapes.batch_ended)
    refused_for_room = staticmethod(api_shapes.batch_refused_for_room)
    failure = staticmethod(api_shapes.batch_errors_text)
    result_files = staticmethod(api_shapes.result_file_ids)

    async def upload(self, filename: str, content: bytes) -> dict[str, Any]:
        """POST /files; an upload that may have been made is looked for by its (unique) filename before another."""
        body, content_type = multipart_form(api_shapes.upload_fields(), api_shapes.UPLOAD_FILE_FIELD, filename, content)
        return await self._make(api_shapes.FILES, body, content_type, lambda: self.find_file(filename))

    async def create(
        self, input_file_id: str, endpoint: str, metadata: Mapping[str, str], *, earlier: Collection[str] = (),
    ) -> dict[str, Any]:
        """POST /batches; a create that may have been made is looked for by its metadata (the part's token) and its
        input file, before another. `earlier`: the ids of batches made for it before (refused ones), never taken."""
        body = api_shapes.batch_create_body(input_file_id, endpoint, metadata)
        return await self._make(api_shapes.BATCHES, body, "application/json", lambda: self.batch_made(input_file_id, metadata, earlier))

    async def made_unheard(self, part: Part, known: set[str]) -> dict[str, Any] | None:
        """The batch a create for `part` made without its answer being heard (a killed run, a 504): by the part's
        token in its metadata and its uploaded file. `known`: every batch the record names (unused here: the token
        tells the part's own)."""
        if part.file_id is None:
            return None
        return await self.batch_made(part.file_id, {PART_METADATA_KEY: part.token}, part.batch_ids)

    async def batch_made(self, input_file_id: str, metadata: Mapping[str, str], earlier: Collection[str] = ()) -> dict[str, Any] | None:
        """The batch a create with this input file and metadata made without its answer being heard (a killed run,
        a 504), if one was; `earlier`: ids never taken (the part's refused batches)."""
        for key, value in metadata.items():
            found = await self.find_batch(key, value)
            if found is not None and api_shapes.batch_input_file(found) == input_file_id and found.get("id") not in earlier:
                return found
        return None

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", api_shapes.batch_path(checked_id(batch_id, "the batch id asked after")))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the API to cancel a batch: it is "cancelling", then "cancelled" with an output file of what it finished."""
        return await self._json("POST", api_shapes.batch_cancel_path(checked_id(batch_id, "the batch id to cancel")))

    async def download(self, file_id: str, sink: IO[bytes]) -> None:
        """Write a file's content to `sink` (output files can be larger than memory should hold)."""
        await self._download_to(api_shapes.file_content_path(checked_id(file_id, "the file id to download")), sink)

    async def _download_to(self, path: str, sink: IO[bytes]) -> None:
        """GET `path` into `sink`, which a try cut short leaves as it found it for the next."""
        start = sink.tell()

        def rewind() -> None:
            sink.seek(start)
            sink.truncate()

        await self._call("GET", path, sink=sink, before_retry=rewind)

    async def find_file(self, filename: str) -> dict[str, Any] | None:
        """The batch input file of this name, if one was uploaded (by a run killed before it recorded the id)."""
        listing = await self._json("GET", api_shapes.FILES_LISTING)
        found = next((file for file in _data(listing) if api_shapes.file_name(file) == filename), None)
        if found is not None:
            checked_id(found.get("id"), f"GET {self.root}{api_shapes.FILES}: the id of file {filename}")
        return found

    async def find_batch(self, key: str, value: str) -> dict[str, Any] | None:
        """The newest batch whose metadata has `key`: `value`, among the most recent `MAX_BATCHES_SEARCHED`."""
        after: str | None = None
        for _ in range(MAX_BATCHES_SEARCHED // api_shapes.BATCHES_PAGE):
            listing = await self._json("GET", api_shapes.batches_listing(after))
            for batch in _data(listing):
                if api_shapes.batch_metadata(batch).get(key) == value:
                    checked_id(batch.get("id"), f"GET {self.root}{api_shapes.BATCHES}: the id of the batch with {key} {value}")
                    return batch
            last = listing.get("last_id")
            if not listing.get("has_more") or not isinstance(last, str):
                return None
            after = checked_id(last, f"GET {self.root}{api_shapes.BATCHES}: the listing's last_id")  # it goes in the next URL
        return None

    async def _make(
        self, path: str, body: bytes, content_type: str, made: Callable[[], Awaitable[dict[str, Any] | None]],
    ) -> dict[str, Any]:
        """POST `path` to make something (an upload, a batch); when a try may have made it (no answer, a 5xx), what
        `made` finds is taken instead of trying again. Its id is checked (`SAFE_ID`)."""
        for attempt, delay in enumerate(_delays(), start=1):
            try:
                answer = await self._json("POST", path, body, content_type, once_unsure=True)
            except BatchAPIError as error:
                if not error.maybe_made or attempt == CALL_ATTEMPTS:
                    raise
            else:
                checked_id(answer.get("id"), f"POST {self.root}{path}: the new id in its answer")
                return answer
            await self._clock.sleep(delay)
            found = await made()
            if found is not None:
                checked_id(found.get("id"), f"POST {self.root}{path}: the id of what it made unanswered")
                return found
        raise AssertionError("unreachable: the last try raises")

    async def _json(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None, *, once_unsure: bool = False,
    ) -> dict[str, Any]:
        response = await self._call(method, path, body, content_type, once_unsure=once_unsure)
        try:
            value = strict_json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, strict_json.InvalidJSON) as error:
            raise BatchAPIError(f"{method} {self.root}{_path_only(path)}: the answer is not JSON ({error})") from None
        if not isinstance(value, dict):
            raise BatchAPIError(f"{method} {self.root}{_path_only(path)}: the answer is not a JSON object")
        return value

    async def _call(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None, *,
        sink: IO[bytes] | None = None, before_retry: Callable[[], None] | None = None, once_unsure: bool = False,
    ) -> TransportResponse:
        """The call's 2xx answer; tried again after no answer, a 429 or a 5xx, up to `CALL_ATTEMPTS` times. With
        `once_unsure` (a call that makes something), no answer or a 5xx raises BatchAPIError with `maybe_made` at
        once: it may have been made; a 429 is still tried again (refused before it was done)."""
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        call = HTTPCall(method, self.root + _with_query(path, self.query), headers, body)
        where = f"{method} {self.root}{_path_only(path)}"
        problem = ""
        for attempt, delay in enumerate(_delays(), start=1):
            hint = None
            try:
                response = await self._http.call(call, sink)
            except TransportError as error:
                problem = self._scrub(str(error))
                if once_unsure:
                    raise BatchAPIError(f"{where}: no answer ({problem})", maybe_made=True) from None
            else:
                if 200 <= response.status < 300:
                    return response
                problem = f"HTTP {response.status}: {self._message(response)}"
                if response.status != 429 and response.status < 500:
                    raise BatchAPIError(f"{where} failed: {problem}", status=response.status)
                if once_unsure and response.status >= 500:
                    raise BatchAPIError(f"{where}: {problem}", status=response.status, maybe_made=True)
                hint = _server_wait(response)
            if attempt == CALL_ATTEMPTS:
                break
            if before_retry is not None:
                before_retry()
            await self._clock.sleep(hint if hint is not None else delay)
        raise BatchAPIError(f"{where} failed after {CALL_ATTEMPTS} tries: {problem}")

    def _message(self, response: TransportResponse) -> str:
        text = response.body.decode("utf-8", errors="replace")
        try:
            error = strict_json.loads(text).get("error")
            message = error.get("message") if isinstance(error, dict) else None
        except (strict_json.InvalidJSON, AttributeError):
            message = None
        return self._scrub(message if isinstance(message, str) else text[:500] or "(no body)")


def api_root(request_url: str) -> str:
    """The API root the Files and Batches endpoints hang from: "https://api.openai.com/v1" for any of its endpoints."""
    parts = urlsplit(resolve_url(request_url, api_shapes.BATCHES_URL))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.removesuffix(api_shapes.BATCHES), "", ""))


def _server_wait(response: TransportResponse) -> float | None:
    """The wait a 429 or 5xx asks for in its `retry-after-ms` or `retry-after` header, at most `MAX_HINTED_CALL_DELAY`
    (a longer one is waited out that long, and asked again); None when it asks for none."""
    seconds = retry_after_seconds({name.lower(): value for name, value in response.headers.items()})
    return min(seconds, MAX_HINTED_CALL_DELAY) if seconds is not None else None


def _delays() -> Iterator[float]:
    delay = FIRST_CALL_DELAY
    while True:
        yield delay
        delay = min(delay * 2, MAX_CALL_DELAY)


def _data(listing: Mapping[str, Any]) -> list[dict[str, Any]]:
    data = listing.get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}" if query else path


def _path_only(path: str) -> str:
    return path.partition("?")[0]

