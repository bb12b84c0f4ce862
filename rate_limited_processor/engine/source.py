"""What a run reads its requests from: the input items, and the next one fetched without blocking the feeder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from ..base.models import APIRequest, RejectedLine

__all__ = ["END", "PENDING", "RequestItem", "RequestSource", "Source", "from_mapping"]

#: What a run accepts: request bodies (an optional "metadata" key rides along unsent), prepared
#: requests, or lines the reader already rejected; from a plain or an async iterable.
RequestItem = Mapping[str, Any] | APIRequest | RejectedLine
RequestSource = Iterable[RequestItem] | AsyncIterable[RequestItem]

#: What `Source.poll` returns at the end of the input, and while an async read is still in progress.
END: Any = object()
PENDING: Any = object()


class Source:
    """The next input item, fetched without blocking the feeder.

    A plain iterable is read directly. An async one is read in a task, so a slow source (a pipeline
    waiting on its own consumer) never holds up retries that are due. At most one item is read ahead.
    """

    __slots__ = ("_iterator", "_async_iterator", "_fetch", "exhausted")

    def __init__(self, requests: RequestSource) -> None:
        self._iterator: Iterator[RequestItem] | None = None
        self._async_iterator: AsyncIterator[RequestItem] | None = None
        if isinstance(requests, AsyncIterable):
            self._async_iterator = aiter(requests)
        else:
            self._iterator = iter(requests)
        self._fetch: asyncio.Future[Any] | None = None
        self.exhausted = False

    @property
    def fetching(self) -> asyncio.Future[Any] | None:
        """The read in progress, to wait on; None when nothing is being read."""
        return self._fetch

    def poll(self) -> Any:
        """The next item, `PENDING` while an async read is in progress, or `END`."""
        if self._iterator is not None:
            item = next(self._iterator, END)
        else:
            if self._fetch is None:
                assert self._async_iterator is not None
                self._fetch = asyncio.ensure_future(anext(self._async_iterator, END))
            if not self._fetch.done():
                return PENDING
            fetch, self._fetch = self._fetch, None
            item = fetch.result()
        if item is END:
            self.exhausted = True
        return item

    async def aclose(self) -> None:
        """Close the source (the input file, the user's generator) when the run ends, however it ends."""
        if self._fetch is not None:
            self._fetch.cancel()
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        aclose = getattr(self._async_iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):  # still running inside the cancelled fetch: closing already
                await aclose()



def from_mapping(item: Mapping[str, Any], index: int) -> APIRequest:
    body = dict(item)
    metadata = body.pop("metadata", None)
    return APIRequest(index=index, body=body, metadata=metadata)
