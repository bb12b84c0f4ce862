"""`--mode batch` through a Message Batches API (Anthropic's): the calls, and the lines' requests and rows.

The API's shapes (paths, bodies, statuses, results, the custom_id rule) are `providers/anthropic.py`'s; here are
the calls (`MessageBatchesAPI`, over the same retrying seam as the Files and Batches client, `batch_api.py`) and
the lines' side (`MessageBatchLines`: a part's requests go in the create call itself, and each result line
becomes its line's row, in the shape an online answer's row has). `batch_job.py` drives either API.

Finding a batch a killed run created but never recorded. A Message Batch carries no metadata, and what it was
asked (its custom_ids) can be read only from its results, once it has ended. What can be seen before that is a
listing: each batch's id, `created_at` and `request_counts`. So:

1. before the create call, the part records `create_started_at` (this machine's clock) beside the results, and
   every custom_id it sends starts with the part's token ("rlp-<random>-part-0001-<line>-<identity>");
2. a rerun that finds a part with `create_started_at` and no batch id lists the batches created since then (less
   `CLOCK_SLACK` for the two clocks' disagreement), and takes the oldest that holds exactly the part's number of
   requests and that no part of this record names (nor proved not its) as the part's batch, unconfirmed;
3. when that batch ends its results are read before any row is written: if none of its custom_ids carries the
   part's token it was someone else's: it is set aside (`Part.passed_over`), never cancelled, and the part
   looks again, or is created when nothing is left to look at.

The same look is made within a run, before a create is tried again after no answer or a 5xx (a gateway's 504 can
come after the batch was made): `BatchAPI._make`. A 429 is tried again at once (refused, nothing made).

Nothing is ever cancelled on a guess, and a part is created again only when no batch created since its create
started could be its. The cost of the rule is a wait: a look-alike batch of someone else's (same size, same
minutes) is waited for until it ends before the part is sent. What it cannot see: a batch made but not yet in the
listing when it is looked at; its lines would be sent twice (their rows are written once).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import IO, Any

from ..base.models import APIRequest, RequestResult, ResultKind
from ..core.retry_policy import answer_problem
from ..files.resume import identity_of_item
from ..providers import anthropic as api_shapes
from ..providers.endpoints import Endpoint
from .batch_api import MAX_BATCHES_SEARCHED, BatchAPI, BatchAPIError, checked_id
from .batch_rows import BatchLines, failure_row
from .batch_state import Part

__all__ = ["MessageBatchesAPI", "MessageBatchLines", "messages_root", "owns_answers", "CLOCK_SLACK"]

#: Seconds this machine's clock and the API's may disagree by, when listing the batches created since a create began.
CLOCK_SLACK = 300.0
#: A custom_id's length but for its line number: "rlp-<16 hex>-part-0001-" and "-<16 hex>" (a part number past 9,999 adds a digit).
_CUSTOM_ID_LENGTH = len("rlp-0123456789abcdef-part-00001-") + 17
#: A results URL's path under the root: plain segments only (no "..", no query), so the key goes nowhere unexpected.
_PLAIN_PATH = re.compile(r"(/[A-Za-z0-9_-]+)+")


def messages_root(request_url: str) -> str:
    """The root the batch calls hang from: "https://api.anthropic.com/v1/messages"."""
    return api_shapes.messages_root(request_url)


class MessageBatchesAPI(BatchAPI):
    """The Message Batches calls, to one root (".../v1/messages"), with the run's auth headers; the inherited
    retrying `_call` does the HTTP (no answer, 429, 5xx: tried again, but a create is looked for first; other
    errors: `BatchAPIError`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"MessageBatchesAPI({self.root!r})"

    #: Whether a batch has ended (every request succeeded, errored, was canceled or expired).
    ended = staticmethod(api_shapes.batch_ended)
    status = staticmethod(api_shapes.batch_status)

    async def create_batch(self, part: Part, body: bytes, known: set[str]) -> dict[str, Any]:
        """POST {root}/batches with the part's requests. A create that gets no answer or a 5xx may have been made
        all the same: before it is tried again, the batch it may have made is looked for (`unrecorded_batch`)."""
        return await self._make(api_shapes.BATCHES, body, "application/json", lambda: self.unrecorded_batch(part, known))

    async def results(self, batch: dict[str, Any], sink: IO[bytes]) -> None:
        """Write an ended batch's results (JSONL) to `sink`. Its `results_url` must be under the root: the key is
        sent nowhere else."""
        url = batch.get("results_url")
        if not isinstance(url, str) or not url.startswith(self.root + "/") or not _PLAIN_PATH.fullmatch(url[len(self.root) :]):
            raise BatchAPIError(f"batch {batch.get('id')} ended without a results_url under {self.root}")
        await self._download_to(url[len(self.root) :], sink)

    async def created_since(self, since: float) -> list[dict[str, Any]]:
        """The batches created at `since` (epoch seconds) or later, newest first (among the most recent
        `MAX_BATCHES_SEARCHED`)."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(MAX_BATCHES_SEARCHED // api_shapes.BATCHES_PAGE):
            listing = await self._json("GET", api_shapes.batches_listing(after))
            data = listing.get("data")
            for batch in data if isinstance(data, list) else []:
                created = api_shapes.batch_created_at(batch) if isinstance(batch, dict) else None
                if created is None:
                    continue
                if created < since:
                    return found
                found.append(batch)
            last = listing.get("last_id")
            if not listing.get("has_more") or not isinstance(last, str):
                break
            after = checked_id(last, f"GET {self.root}{api_shapes.BATCHES}: the listing's last_id")  # it goes in the next URL
        return found

    async def made_unheard(self, part: Part, known: set[str]) -> dict[str, Any] | None:
        """The batch a create for `part` may have made unheard: none before its create began, else `unrecorded_batch`."""
        return await self.unrecorded_batch(part, known) if part.create_started_at is not None else None

    async def unrecorded_batch(self, part: Part, known: set[str]) -> dict[str, Any] | None:
        """The batch a killed run may have created for `part` without recording it (see the module's docstring):
        the oldest created since its create began, of its size, that no part names."""
        assert part.create_started_at is not None
        candidates = [
            batch for batch in await self.created_since(part.create_started_at - CLOCK_SLACK)
            if batch.get("id") not in known and batch.get("id") not in part.passed_over and api_shapes.batch_total(batch) == part.count
        ]
        if not candidates:
            return None
        checked_id(candidates[-1].get("id"), f"GET {self.root}{api_shapes.BATCHES}: the id of a batch listed")
        return candidates[-1]


class MessageBatchLines(BatchLines):
    """`BatchLines` for a Message Batches API: only Messages lines, sent as requests of the create call, under
    custom_ids that carry their part's token; results read as its result lines."""

    def refusal(self, endpoint: Endpoint) -> str | None:
        if endpoint is Endpoint.MESSAGES:
            return None
        return f"--mode batch with a /v1/messages --request_url sends Messages requests only; this line is for /{endpoint.value}"

    def line_size(self, item: APIRequest, endpoint: str) -> int:
        params = json.dumps(item.body, ensure_ascii=False, separators=(",", ":")).encode()
        return api_shapes.batch_request_size("x" * (_CUSTOM_ID_LENGTH + len(str(item.index))), params)

    def custom_id(self, part: Part, item: APIRequest) -> str:
        return f"{part.token}-{item.index}-{identity_of_item(item):016x}"

    def content(self, part: Part) -> bytes:
        """The create call's body: each of the part's lines as a request."""
        requests = [
            json.dumps(api_shapes.batch_request(self.custom_id(part, item), item.body), ensure_ascii=False, separators=(",", ":")).encode()
            for item in self.items(set(part.line_numbers())) if isinstance(item, APIRequest)
        ]
        return api_shapes.batch_create_body(requests)

    def read_result(
        self, item: APIRequest, endpoint: Endpoint, answer: dict[str, Any] | None, batch: dict[str, Any], estimate: tuple[int, int, int],
    ) -> tuple[RequestResult, bool]:
        failed = failure_row(item, estimate)
        if answer is None:
            reason = (
                f"batch {batch.get('id')} ended without a result for this line as it is now (was it edited since the batch was "
                "created?); rerun with --retry_failed to send it again"
            )
            return replace(failed, errors=(reason,)), True
        result = api_shapes.read_batch_result(answer.get("result"))
        if result.message is not None:
            problem = answer_problem(endpoint, result.message)
            if problem is None:
                return replace(failed, response=result.message, kind=ResultKind.SUCCEEDED, status=200), False
            return replace(failed, errors=(f"succeeded, but {problem}",), status=200, error_body=result.message), False
        return replace(failed, errors=(result.reason,), status=result.status, error_body=result.error_body), result.retryable


def owns_answers(part: Part, custom_ids: Iterable[str]) -> bool:
    """Whether a batch's results carry any of the part's custom_ids (then it is the part's batch)."""
    prefix = f"{part.token}-"
    return any(custom_id.startswith(prefix) for custom_id in custom_ids)
